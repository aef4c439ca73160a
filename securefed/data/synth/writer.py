"""Write a synthetic federation in the FeTS2022 layout, atomically.

Everything is written under a temporary sibling folder and renamed into place at the end, so an
interrupted run leaves no half-written federation (only a `.DIR.partial-*` folder to delete).
Cases are generated in parallel (one process per worker); each worker writes its own case folder.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np

from securefed.data.synth.anatomy import MNI_ORIGIN_MM, Grid, output_grid
from securefed.data.synth.case import make_case
from securefed.data.synth.contrast import MODALITIES
from securefed.data.synth.presets import CaseSpec, Preset, get_preset, plan_cases
from securefed.errors import ConfigError, DataError

__all__ = ["TRUTH_COLUMNS", "SynthResult", "synthesize", "write_case"]

TRUTH_COLUMNS = (
    "subject_id",
    "institution",
    "scanner",
    "ncr_ml",
    "ed_ml",
    "et_ml",
    "tc_ml",
    "wt_ml",
)


@dataclass(frozen=True)
class SynthResult:
    out: Path
    preset: str
    seed: int
    n_cases: int
    n_institutions: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def write_case(spec: CaseSpec, grid: Grid, root: Path) -> dict[str, object]:
    """Generate one case, write its five NIfTI files under root/<subject_id>/ and return its
    truth.csv row."""
    case = make_case(spec, grid)
    folder = root / spec.subject_id
    folder.mkdir(parents=True, exist_ok=False)
    for modality in MODALITIES:
        _save_nifti(
            case.images[modality], case.affine, folder / f"{spec.subject_id}_{modality}.nii.gz"
        )
    _save_nifti(case.seg, case.affine, folder / f"{spec.subject_id}_seg.nii.gz")
    row: dict[str, object] = {
        "subject_id": spec.subject_id,
        "institution": spec.partition_id,
        "scanner": spec.scanner,
    }
    row.update({f"{k}_ml": v for k, v in case.volumes_ml.items()})
    return row


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


_GRID: list[Grid] = []


def _init_worker(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    """Pool initializer: the grid every case of this run is generated on; the worker exits with
    its parent (a killed command leaves no workers)."""
    from securefed.procs import die_with_parent

    die_with_parent()
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = MNI_ORIGIN_MM
    _GRID[:] = [Grid(shape=shape, spacing=spacing, affine=affine)]


def _worker(spec_fields: dict[str, object], root: str) -> dict[str, object]:
    return write_case(CaseSpec(**spec_fields), _GRID[0], Path(root))  # type: ignore[arg-type]


def synthesize(
    out: str | os.PathLike[str],
    preset: str | Preset = "demo",
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    *,
    spacing: float | None = None,
    workers: int = 1,
    force: bool = False,
    on_case: Callable[[str], None] | None = None,
) -> SynthResult:
    """Write a synthetic federation to `out`: case folders, partitioning_1.csv and truth.csv.

    `preset` is a name from PRESETS or a Preset. `spacing` (mm, isotropic) defaults to the
    preset's; `shape` instead fixes the grid size over the MNI field of view. Deterministic in
    (preset, seed, grid), whatever `workers`. Refuses a non-empty `out` unless `force` (which
    replaces it). `on_case(subject_id)` is called after each case. Simulated data only: no site
    data is read or released.
    """
    spec = preset if isinstance(preset, Preset) else get_preset(preset)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    try:
        grid = output_grid(spacing=spacing if spacing is not None else spec.spacing_mm, shape=shape)
    except ValueError as exc:
        raise ConfigError(f"bad synthetic grid: {exc}") from exc
    target = Path(out).resolve()
    if target.exists() and not target.is_dir():
        raise DataError(f"{target} exists and is not a folder; choose another --out")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise DataError(
            f"{target} is not empty; choose an empty --out or pass --force to replace it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    cases = plan_cases(spec, seed)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        rows = _generate(cases, grid, staging, workers, on_case)
        rows.sort(key=lambda r: str(r["subject_id"]))
        _write_csv(
            staging / "partitioning_1.csv",
            ("Partition_ID", "Subject_ID"),
            [(r["institution"], r["subject_id"]) for r in rows],
        )
        _write_csv(
            staging / "truth.csv", TRUTH_COLUMNS, [tuple(r[c] for c in TRUTH_COLUMNS) for r in rows]
        )
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SynthResult(
        target, spec.name, seed, len(cases), len(spec.institutions), grid.shape, grid.spacing
    )


def _generate(
    cases: list[CaseSpec],
    grid: Grid,
    root: Path,
    workers: int,
    on_case: Callable[[str], None] | None,
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    if workers == 1 or len(cases) == 1:
        for case in cases:
            rows.append(write_case(case, grid, root))
            if on_case:
                on_case(case.subject_id)
        return rows
    context = get_context("forkserver")
    context.set_forkserver_preload(["securefed.data.synth.writer"])
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(cases)),
        mp_context=context,
        initializer=_init_worker,
        initargs=(grid.shape, grid.spacing),
    )
    try:
        futures = {pool.submit(_worker, asdict(c), str(root)): c for c in cases}
        for future in as_completed(futures):
            rows.append(future.result())
            if on_case:
                on_case(futures[future].subject_id)
    except BaseException:
        # Ctrl-C or a failed case: drop the queued cases instead of waiting for them.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return rows


def _replace_dir(staging: Path, target: Path) -> None:
    """Move the finished staging folder to target; an existing target is swapped out first."""
    os.chmod(staging, 0o755)  # mkdtemp creates 0700
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "replaced")
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
