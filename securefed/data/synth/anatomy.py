"""Healthy anatomy from nilearn's bundled MNI152 (2009) template: GM, WM and CSF probability maps.

No download: nilearn 0.13 ships the template and the GM/WM maps. CSF = 1 - GM - WM inside the
brain mask (GM+WM > 0.1, closed and hole-filled so that ventricles and sulci belong to it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import ndimage

__all__ = ["MNI_FOV_MM", "MNI_ORIGIN_MM", "Anatomy", "Grid", "load_anatomy", "output_grid"]

# Field of view of the 1 mm MNI152 grid (197 x 233 x 189 voxel centres) and its first voxel.
MNI_FOV_MM: tuple[float, float, float] = (196.0, 232.0, 188.0)
MNI_ORIGIN_MM: tuple[float, float, float] = (-98.0, -134.0, -72.0)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Anatomy:
    """Tissue probability maps on the template grid (float32) and the grid's voxel->mm affine."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # float32 0/1
    affine: np.ndarray
    centre_mm: np.ndarray  # brain centroid in mm


@dataclass(frozen=True)
class Grid:
    """An output voxel grid covering the MNI field of view: shape, spacing (mm) and affine."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray

    def world_coords(self) -> np.ndarray:
        """(3, X, Y, Z) float32 voxel-centre positions in mm (axis-aligned grid)."""
        axes = [
            np.float32(o) + np.float32(s) * np.arange(n, dtype=np.float32)
            for o, s, n in zip(MNI_ORIGIN_MM, self.spacing, self.shape, strict=True)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"))


def output_grid(
    spacing: float | tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
) -> Grid:
    """The grid for a spacing (mm; 2 mm gives 99x117x95) or, if given, for an exact shape."""
    if shape is not None:
        if len(shape) != 3 or min(shape) < 8:
            raise ValueError(f"shape must be 3 sizes >= 8, got {shape}")
        sp = tuple(fov / (n - 1) for fov, n in zip(MNI_FOV_MM, shape, strict=True))
        shp = tuple(int(n) for n in shape)
    else:
        s = 2.0 if spacing is None else spacing
        if isinstance(s, int | float | np.number):
            sp = (float(s),) * 3
        else:
            sp = tuple(float(v) for v in s)
        if min(sp) <= 0:
            raise ValueError(f"spacing must be positive, got {spacing}")
        shp = tuple(
            int(np.floor(fov / v + 1e-6)) + 1 for fov, v in zip(MNI_FOV_MM, sp, strict=True)
        )
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = MNI_ORIGIN_MM
    return Grid(shape=_xyz(shp), spacing=_xyz(sp), affine=affine)


def _xyz(values: Iterable[_T]) -> tuple[_T, _T, _T]:
    """The three items of ``values`` (already checked to be three) as a typed triple."""
    x, y, z = values
    return x, y, z


@functools.lru_cache(maxsize=2)
def load_anatomy(resolution: int = 2) -> Anatomy:
    """Load the bundled MNI152 GM/WM maps at 1 or 2 mm (cached per process; no network)."""
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    wm_img = datasets.load_mni152_wm_template(resolution=resolution)
    gm = np.clip(np.asarray(gm_img.get_fdata(), dtype=np.float32), 0, 1)
    wm = np.clip(np.asarray(wm_img.get_fdata(), dtype=np.float32), 0, 1)
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    mask = ndimage.binary_closing(gm + wm > 0.1, structure=np.ones((3, 3, 3)), iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    brain = mask.astype(np.float32)
    csf = np.clip(1.0 - gm - wm, 0, 1) * brain
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    idx = np.argwhere(mask).mean(axis=0)
    centre = affine[:3, :3] @ idx + affine[:3, 3]
    return Anatomy(gm * brain, wm * brain, csf, brain, affine, centre)
