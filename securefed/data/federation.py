"""A FeTS2022 root joined with its partition file: :func:`load_federation`.

Only paths, subject ids and partition ids are handled here; nothing leaves the site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from securefed.data.cases import CaseFiles, CaseProblem, discover_cases
from securefed.data.partitions import read_partitioning, read_patients, resolve_partitioning
from securefed.data.splits import Split, split_cases
from securefed.data.validate import CheckLevel, ProgressCallback, check_cases
from securefed.errors import NoCasesError

__all__ = ["UNPARTITIONED", "Federation", "load_federation", "summary_line"]

UNPARTITIONED = 0
"""Partition id of every case when no partition file is used (``partitioning=None``)."""


def summary_line(loaded: int, problems: tuple[CaseProblem, ...], limit: int = 5) -> str:
    """E.g. ``47 cases loaded, 2 excluded: FeTS2022_00012 (...), FeTS2022_00013 (...)``."""
    noun = "case" if loaded == 1 else "cases"
    if not problems:
        return f"{loaded} {noun} loaded, 0 excluded"
    excluded = len({p.subject_id for p in problems})
    shown = "; ".join(str(p) for p in problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{loaded} {noun} loaded, {excluded} excluded: {shown}{more}"


@dataclass(frozen=True)
class Federation:
    """Usable cases by subject id, their partition ids, and every excluded case with its reason.

    ``listed`` is the whole partition file (also cases that are missing or broken), which
    :meth:`splits` uses so that one excluded case does not change anybody else's split.
    """

    cases: dict[str, CaseFiles]
    partition_of: dict[str, int]
    problems: tuple[CaseProblem, ...]
    root: Path | None = None
    partition_file: Path | None = None
    listed: dict[str, int] = field(default_factory=dict)
    patient_of: dict[str, str] = field(default_factory=dict)
    """Subject id -> patient id (the partition file's ``Patient_ID``); empty: one case each."""

    def patient(self, subject_id: str) -> str:
        """The patient of a case (the case itself without a ``Patient_ID`` column)."""
        return self.patient_of.get(subject_id, subject_id)

    @property
    def partitions(self) -> dict[int, list[str]]:
        """Partition id -> sorted subject ids of the usable cases."""
        out: dict[int, list[str]] = {}
        for subject in sorted(self.partition_of):
            out.setdefault(self.partition_of[subject], []).append(subject)
        return dict(sorted(out.items()))

    def summary(self) -> str:
        return summary_line(len(self.cases), self.problems)

    def splits(
        self, seed: int = 0, test_fraction: float = 0.15, val_fraction: float = 0.2
    ) -> dict[str, Split]:
        """The paper's split of the usable cases, computed over the full partition listing."""
        base = self.listed or self.partition_of
        full = split_cases(
            base, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction,
            patient_of=self.patient_of,
        )  # fmt: skip
        return {s: full[s] for s in sorted(self.cases)}


def load_federation(
    root: str | Path,
    partitioning: str | Path | None = "partitioning_1",
    *,
    check: CheckLevel = "header",
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> Federation:
    """Discover the cases under ``root``, join them with the partition file and check them.

    ``partitioning``: a name (``partitioning_1`` -> ``<root>/partitioning_1.csv``), a CSV path, or
    None (every case in partition 0). ``check``: "header" (cheap, default), "full" (reads every
    voxel; parallel with ``workers``) or "none". Cases listed but missing on disk, on disk but not
    listed, or failing the check are excluded and reported in ``problems``; raises NoCasesError
    when no case is left.
    """
    root = Path(root)
    discovery = discover_cases(root)
    problems = list(discovery.problems)
    broken = {p.subject_id for p in discovery.problems}
    partition_file: Path | None = None
    patient_of: dict[str, str] = {}
    if partitioning is None:
        listed = {s: UNPARTITIONED for s in discovery.cases}
    else:
        partition_file = resolve_partitioning(root, partitioning)
        listed = read_partitioning(partition_file)
        patient_of = read_patients(partition_file)
        for subject in listed:
            if subject not in discovery.cases and subject not in broken:
                problems.append(
                    CaseProblem(
                        subject,
                        partition_file.name,
                        f"listed in {partition_file.name} but no folder {root / subject}",
                    )
                )
    joined = [c for s, c in discovery.cases.items() if s in listed]
    for subject in discovery.cases:
        if subject not in listed:
            problems.append(
                CaseProblem(
                    subject,
                    None,
                    f"on disk but not listed in {partition_file.name if partition_file else '-'}"
                    "; add it to the partition file or move the folder out",
                )
            )
    result = check_cases(joined, level=check, workers=workers, progress=progress)
    problems.extend(result.problems)
    cases = {s: discovery.cases[s] for s in result.ok}
    problems.sort(key=lambda p: p.subject_id)
    fed = Federation(
        cases=cases,
        partition_of={s: listed[s] for s in cases},
        problems=tuple(problems),
        root=root,
        partition_file=partition_file,
        listed=dict(listed),
        patient_of=patient_of,
    )
    if not cases:
        raise NoCasesError(f"no usable case in {root}: {fed.summary()}")
    return fed
