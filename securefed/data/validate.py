"""Case validation: a cheap header-only check and a full check that reads every voxel.

The full check of FeTS2022 (1251 cases x 5 files) is I/O and gunzip bound; ``workers > 1`` spreads
cases over a process pool (only paths go to the workers and only problem strings come back).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from securefed.data.cases import CaseFiles, CaseProblem
from securefed.data.nifti import check_voxels, read_voxels
from securefed.data.volumes import check_geometry
from securefed.errors import CaseError, DataError

__all__ = ["CheckLevel", "CheckResult", "ProgressCallback", "check_case", "check_cases"]

CheckLevel = Literal["none", "header", "full"]
ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each case."""


@dataclass(frozen=True)
class CheckResult:
    """Subject ids that passed (sorted) and one problem per failed case."""

    ok: tuple[str, ...]
    problems: tuple[CaseProblem, ...]


def check_case(case: CaseFiles, *, full: bool = False) -> None:
    """Raise CaseError (naming case and file) if ``case`` is unusable.

    Header check: every file present and readable, 3D, same shape and affine as flair, not
    truncated. Full check adds: every voxel readable, finite, and seg labels in {0, 1, 2, 4}.
    """
    check_geometry(case)
    if not full:
        return
    for key, path in case.files().items():
        data = read_voxels(case.subject_id, path)
        check_voxels(case.subject_id, path, data, is_seg=key == "seg")
        del data


def _check_worker(
    subject_id: str, folder: str, files: dict[str, str], full: bool
) -> tuple[str, str | None, str] | None:
    """Process-pool entry point: plain strings in, plain strings out (no pickled objects)."""
    paths = {k: Path(v) for k, v in files.items()}
    seg = paths.pop("seg", None)
    case = CaseFiles(subject_id=subject_id, folder=Path(folder), images=paths, seg=seg)
    try:
        check_case(case, full=full)
    except CaseError as exc:
        p = CaseProblem.from_error(exc, subject_id)
        return (p.subject_id, p.file, p.problem)
    return None


def check_cases(
    cases: Iterable[CaseFiles],
    *,
    level: CheckLevel = "header",
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> CheckResult:
    """Check every case at ``level`` ("none" accepts all). For "full", ``workers`` > 1 spreads
    cases over a spawned process pool (scripts need the ``if __name__ == "__main__":`` guard).
    Results do not depend on ``workers``."""
    items = sorted(cases, key=lambda c: c.subject_id)
    total = len(items)
    if level == "none":
        if progress is not None:
            progress(total, total)
        return CheckResult(ok=tuple(c.subject_id for c in items), problems=())
    if level not in ("header", "full"):
        raise ValueError(f"level must be 'none', 'header' or 'full', not {level!r}")
    full = level == "full"
    failed: dict[str, CaseProblem] = {}
    args = [
        (c.subject_id, str(c.folder), {k: str(v) for k, v in c.files().items()}, full)
        for c in items
    ]
    done = 0
    if workers <= 1 or total <= 1 or not full:  # header checks are too cheap to ship out
        for a in args:
            res = _check_worker(*a)
            if res is not None:
                failed[a[0]] = CaseProblem(*res)
            done += 1
            if progress is not None:
                progress(done, total)
    else:
        ctx = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=min(workers, total), mp_context=ctx) as pool:
                futures = {pool.submit(_check_worker, *a): a[0] for a in args}
                for fut in as_completed(futures):
                    res = fut.result()
                    if res is not None:
                        failed[futures[fut]] = CaseProblem(*res)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        except BrokenProcessPool as exc:
            raise DataError(
                f"the {workers}-process check pool failed ({exc}); rerun with workers=1, or guard "
                "the calling script with `if __name__ == '__main__':` (processes are spawned)"
            ) from exc
    ok = tuple(c.subject_id for c in items if c.subject_id not in failed)
    problems = tuple(failed[s] for s in sorted(failed))
    return CheckResult(ok=ok, problems=problems)
