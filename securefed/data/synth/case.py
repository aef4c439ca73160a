"""Generate one synthetic case: warp the template, grow a tumour with mass effect, render the four
contrasts and pass them through the case's scanner. Deterministic in (seed, case index)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.data.synth.anatomy import Grid, load_anatomy
from securefed.data.synth.contrast import render_contrasts
from securefed.data.synth.deform import draw_warp, mass_effect, pull_back, sample
from securefed.data.synth.presets import CaseSpec
from securefed.data.synth.scanners import SCANNERS, acquire, jitter
from securefed.data.synth.tumour import LABELS, draw_geometry, tumour_masks
from securefed.errors import ConfigError, InternalError

__all__ = ["MIN_VOLUME_ML", "SynthCase", "case_rng", "make_case"]

# Smallest accepted volume per label (mL; and at least 8 voxels), else the tumour is redrawn.
MIN_VOLUME_ML = {"ncr": 1.0, "ed": 4.0, "et": 2.0}
_MAX_TRIES = 25


@dataclass(frozen=True)
class SynthCase:
    subject_id: str
    images: dict[str, np.ndarray]  # int16 (X, Y, Z) per modality
    seg: np.ndarray  # uint8 (X, Y, Z) in {0, 1, 2, 4}
    affine: np.ndarray
    volumes_ml: dict[str, float]  # ncr, ed, et, tc, wt
    tissue: dict[str, np.ndarray] | None = None  # gm, wm, csf, brain (only with keep_tissue)


def case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _volumes(seg: np.ndarray, voxel_ml: float) -> dict[str, float]:
    counts = {k: int((seg == v).sum()) for k, v in LABELS.items()}
    counts["tc"] = counts["ncr"] + counts["et"]
    counts["wt"] = counts["tc"] + counts["ed"]
    return {k: round(c * voxel_ml, 3) for k, c in counts.items()}


def _big_enough(seg: np.ndarray, voxel_ml: float) -> bool:
    for name, label in LABELS.items():
        n = int((seg == label).sum())
        if n < 8 or n * voxel_ml < MIN_VOLUME_ML[name]:
            return False
    return True


def make_case(spec: CaseSpec, grid: Grid, *, keep_tissue: bool = False) -> SynthCase:
    """Build the volumes of one case in memory (with its tissue maps if keep_tissue)."""
    if spec.scanner not in SCANNERS:
        raise ConfigError(f"case {spec.subject_id}: unknown scanner {spec.scanner!r}")
    rng = case_rng(spec.seed, spec.index)
    anatomy = load_anatomy(2 if min(grid.spacing) >= 1.9 else 1)
    coords = grid.world_coords()
    warp = draw_warp(rng, grid, anatomy)
    healthy = pull_back(coords, warp)
    wm_h = sample(anatomy.wm, anatomy.affine, healthy)
    brain_h = sample(anatomy.brain, anatomy.affine, healthy)
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    for _ in range(_MAX_TRIES):
        geom = draw_geometry(rng, coords, grid.spacing, wm_h, brain_h)
        amplitude = rng.uniform(0.25, 0.45) * geom.r_core
        pushed = mass_effect(coords, geom.centre, 1.2 * geom.r_core, amplitude)
        where = pull_back(pushed, warp)
        gm, wm, csf, brain = (
            sample(m, anatomy.affine, where)
            for m in (anatomy.gm, anatomy.wm, anatomy.csf, anatomy.brain)
        )
        brain = (brain > 0.5).astype(np.float32)
        masks = tumour_masks(geom, coords, grid.spacing, wm, csf, brain)
        if _big_enough(masks.labels, voxel_ml):
            break
    else:
        raise InternalError(
            f"case {spec.subject_id}: could not draw a tumour with every label present at "
            f"spacing {grid.spacing} mm; use a finer --spacing"
        )
    contrast = SCANNERS[spec.scanner].contrast
    clean = render_contrasts(rng, gm, wm, csf, brain, masks, grid.spacing, contrast)
    profile = jitter(SCANNERS[spec.scanner], rng)
    images = acquire(clean, brain, profile, grid.spacing, rng)
    tissue = {"gm": gm, "wm": wm, "csf": csf, "brain": brain} if keep_tissue else None
    return SynthCase(
        spec.subject_id, images, masks.labels, grid.affine, _volumes(masks.labels, voxel_ml), tissue
    )
