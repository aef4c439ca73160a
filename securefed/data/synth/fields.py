"""Smooth random fields: coarse Gaussian noise expanded with a separable cubic B-spline (cheap,
smooth, deterministic)."""

from __future__ import annotations

import numpy as np

__all__ = ["smooth_noise"]


def _bspline_matrix(n_out: int, n_coarse: int) -> np.ndarray:
    """(n_out, n_coarse) cubic B-spline weights placing n_out points across the inner knots."""
    t = 1.0 + np.linspace(0.0, n_coarse - 3.0, n_out)
    x = np.abs(t[:, None] - np.arange(n_coarse)[None, :])
    w = np.where(x < 1, 2 / 3 - x**2 + x**3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))
    return w.astype(np.float32)


def smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    length_mm: float,
) -> np.ndarray:
    """A zero-mean, unit-std random field on the 3-D `shape` with correlation length ~length_mm."""
    coarse = tuple(
        max(4, int(np.ceil(n * s / length_mm)) + 3) for n, s in zip(shape, spacing, strict=True)
    )
    field = rng.standard_normal(coarse).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, coarse, strict=True)):
        field = np.moveaxis(np.tensordot(_bspline_matrix(n, c), field, axes=(1, axis)), 0, axis)
    field -= field.mean()
    std = float(field.std())
    return (field / std if std > 0 else field).astype(np.float32)
