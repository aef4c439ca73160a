"""Per-case spatial variation: a small random affine, a smooth random deformation and the mass
effect of the tumour, combined into one pull-back map from the case grid to the template."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from securefed.data.synth.anatomy import Anatomy, Grid
from securefed.data.synth.fields import smooth_noise

__all__ = ["Warp", "draw_warp", "mass_effect", "pull_back", "sample"]


@dataclass(frozen=True)
class Warp:
    """x_template = centre + matrix @ (x - centre) + shift + displacement(x), all in mm."""

    matrix: np.ndarray
    shift: np.ndarray
    centre: np.ndarray
    displacement: np.ndarray  # (3, X, Y, Z) float32, mm


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_warp(rng: np.random.Generator, grid: Grid, anatomy: Anatomy) -> Warp:
    """Rotation up to ~6 degrees, scaling 0.92-1.08 per axis, shift up to 4 mm, and a smooth
    deformation (about 25 mm correlation length, about 2.5 mm per component)."""
    angles = rng.uniform(-1, 1, 3) * np.deg2rad(6.0)
    scales = rng.uniform(0.92, 1.08, 3)
    matrix = _rotation(angles) @ np.diag(scales)
    shift = rng.uniform(-4.0, 4.0, 3)
    amplitude = rng.uniform(1.5, 3.0)
    disp = np.stack(
        [amplitude * smooth_noise(rng, grid.shape, grid.spacing, 25.0) for _ in range(3)]
    )
    return Warp(matrix, shift, np.asarray(anatomy.centre_mm, dtype=np.float64), disp)


def mass_effect(
    coords: np.ndarray, centre: np.ndarray, sigma_mm: float, amplitude_mm: float
) -> np.ndarray:
    """Coordinates pulled towards the tumour centre, so that tissue appears pushed outwards.

    Radial displacement m(r) = A (r/s) exp((1 - r^2/s^2)/2), largest (A) at r = s; with
    A < s/1.65 the map stays one-to-one.
    """
    amplitude_mm = min(amplitude_mm, sigma_mm / 1.7)
    diff = coords - centre.reshape(3, 1, 1, 1).astype(np.float32)
    r = np.sqrt((diff**2).sum(axis=0)) + np.float32(1e-6)
    m = amplitude_mm * (r / sigma_mm) * np.exp(0.5 * (1.0 - (r / sigma_mm) ** 2))
    return (coords - diff * (m / r)).astype(np.float32)


def pull_back(coords: np.ndarray, warp: Warp) -> np.ndarray:
    """Template positions (mm) for case positions `coords` (3, X, Y, Z)."""
    c = warp.centre.reshape(3, 1, 1, 1)
    flat = (coords - c).reshape(3, -1)
    out = (warp.matrix @ flat).reshape(coords.shape) + c + warp.shift.reshape(3, 1, 1, 1)
    return (out + warp.displacement).astype(np.float32)


def sample(volume: np.ndarray, affine: np.ndarray, positions_mm: np.ndarray) -> np.ndarray:
    """Trilinear sample of `volume` (on `affine`) at positions in mm; zero outside."""
    inv = np.linalg.inv(affine)
    flat = positions_mm.reshape(3, -1).astype(np.float64)
    idx = inv[:3, :3] @ flat + inv[:3, 3:4]
    out = ndimage.map_coordinates(volume, idx, order=1, mode="constant", cval=0.0)
    return out.reshape(positions_mm.shape[1:]).astype(np.float32)
