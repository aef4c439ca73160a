"""Clip feature vectors to declared bounds (and map to / from the unit box)."""

from __future__ import annotations

import numpy as np

from securefed.privacy.bounds import Bounds

__all__ = ["clip_to_bounds", "from_unit_box", "to_unit_box"]


def clip_to_bounds(matrix: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Each column clipped to [lower, upper]; NaN is refused (it would escape the clip)."""
    x = np.asarray(matrix, dtype=np.float64)
    if np.isnan(x).any():
        raise ValueError("clip_to_bounds: NaN values cannot be clipped")
    return np.minimum(np.maximum(x, lower), upper)


def to_unit_box(matrix: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Clip to the bounds, then scale each column to [0, 1]."""
    clipped = clip_to_bounds(matrix, bounds.lower, bounds.upper)
    return np.clip((clipped - bounds.lower) / bounds.width, 0.0, 1.0)


def from_unit_box(unit: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Inverse of :func:`to_unit_box` (post-processing: no privacy cost)."""
    return bounds.lower + np.asarray(unit, dtype=np.float64) * bounds.width
