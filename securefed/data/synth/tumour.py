"""One glioma-like tumour per case: necrotic core (label 1) inside an enhancing rim (label 4),
inside edema (label 2) that spreads preferentially along white matter.

Shapes are irregular level sets of r(x) + smooth noise; the rim has a controlled thickness (4 mm or
more, and at least 1.5 voxels) so that the enhancing tumour stays learnable at 2 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from securefed.data.synth.fields import smooth_noise

__all__ = ["LABELS", "TumourGeometry", "TumourMasks", "draw_geometry", "tumour_masks"]

LABELS = {"ncr": 1, "ed": 2, "et": 4}


@dataclass(frozen=True)
class TumourGeometry:
    centre: np.ndarray  # mm
    r_core: float  # tumour core radius, mm
    r_edema: float  # whole-tumour radius, mm
    rim: float  # enhancing rim thickness, mm
    shape_noise: np.ndarray  # (3, X, Y, Z) unit-std fields: core, necrosis, edema


@dataclass(frozen=True)
class TumourMasks:
    labels: np.ndarray  # uint8 in {0, 1, 2, 4}
    soft_wt: np.ndarray  # float32 soft memberships for intensity blending (nested)
    soft_tc: np.ndarray
    soft_ncr: np.ndarray


def draw_geometry(
    rng: np.random.Generator,
    coords: np.ndarray,
    spacing: tuple[float, float, float],
    wm: np.ndarray,
    brain: np.ndarray,
) -> TumourGeometry:
    """Random size and a position inside the brain, in white matter when possible."""
    rim = max(4.0, 1.5 * max(spacing)) * rng.uniform(1.0, 1.5)
    r_core = max(rim + 6.0, rng.uniform(12.0, 24.0))
    r_edema = r_core * rng.uniform(1.25, 1.75)
    inside = ndimage.distance_transform_edt(brain > 0.5, sampling=spacing)
    for margin in (r_core + 4.0, 0.6 * r_core, 2.0 * max(spacing)):
        candidates = np.argwhere((wm > 0.6) & (inside > margin))
        if len(candidates) == 0:
            candidates = np.argwhere(inside > margin)
        if len(candidates):
            break
    else:  # pragma: no cover - the template always has deep brain voxels
        candidates = np.argwhere(brain > 0.5)
    pick = candidates[int(rng.integers(len(candidates)))]
    centre = coords[(slice(None), *pick)].astype(np.float64)
    centre = centre + rng.uniform(-0.5, 0.5, 3) * np.asarray(spacing)
    shape = coords.shape[1:]
    noise = np.stack([smooth_noise(rng, shape, spacing, 14.0) for _ in range(3)])
    return TumourGeometry(centre, float(r_core), float(r_edema), float(rim), noise)


def _soft(level: np.ndarray, width_mm: float) -> np.ndarray:
    """Soft inside-ness of {level < 0} (level in mm), about one voxel of transition."""
    return (1.0 / (1.0 + np.exp(np.clip(level / width_mm, -30, 30)))).astype(np.float32)


def tumour_masks(
    geom: TumourGeometry,
    coords: np.ndarray,
    spacing: tuple[float, float, float],
    wm: np.ndarray,
    csf: np.ndarray,
    brain: np.ndarray,
) -> TumourMasks:
    """Labels and soft memberships on the case grid; everything stays inside the brain."""
    diff = coords - geom.centre.reshape(3, 1, 1, 1).astype(np.float32)
    r = np.sqrt((diff**2).sum(axis=0))
    g_core, g_ncr, g_ed = geom.shape_noise
    rho = r + 0.2 * geom.r_core * g_core  # irregular core surface
    level_tc = rho - geom.r_core
    level_ncr = rho + 1.2 * g_ncr - (geom.r_core - geom.rim)
    # Edema: irregular, reaches further along white matter, avoids CSF.
    level_wt = r + 0.3 * geom.r_edema * g_ed - 4.0 * (wm - 0.5) + 8.0 * csf - geom.r_edema
    in_brain = brain > 0.5
    tc = (level_tc < 0) & in_brain
    wt = ((level_wt < 0) & in_brain) | tc
    parts, n = ndimage.label(wt)
    if n > 1:  # keep only edema connected to the core (no stray islands)
        wt = np.isin(parts, np.unique(parts[tc]))
    ncr = (level_ncr < 0) & tc
    labels = np.zeros(r.shape, dtype=np.uint8)
    labels[wt] = LABELS["ed"]
    labels[tc] = LABELS["et"]
    labels[ncr] = LABELS["ncr"]
    width = 0.5 * min(spacing)
    soft_wt = np.maximum(_soft(level_wt, width), wt) * brain
    soft_tc = np.minimum(np.maximum(_soft(level_tc, width), tc) * brain, soft_wt)
    soft_ncr = np.minimum(_soft(level_ncr, width) * tc, soft_tc)
    return TumourMasks(labels, soft_wt.astype(np.float32), soft_tc.astype(np.float32), soft_ncr)
