"""Per-feature scaling to [0, 1]: the paper's percentile scaling, or protocol-declared bounds."""

from __future__ import annotations

import numpy as np

from securefed.errors import ClusteringError

__all__ = ["BoundsScaler", "PercentileScaler", "scale_to_unit"]


def scale_to_unit(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``(x - low) / (high - low)`` clipped to [0, 1]; a zero-width feature maps to 0."""
    width = np.where(high > low, high - low, 1.0)
    return np.clip((np.asarray(x, dtype=np.float64) - low) / width, 0.0, 1.0)


class PercentileScaler:
    """The paper's scaling: per feature, the ``low``..``high`` percentile range -> [0, 1], clipped.

    Fit it on train+val cases only (the caller selects them)."""

    def __init__(self, low: float = 2.0, high: float = 98.0) -> None:
        self.low = low
        self.high = high

    def fit(self, x: np.ndarray) -> PercentileScaler:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ClusteringError(
                f"percentile scaling needs a 2-D table with at least 2 cases, got shape {x.shape}"
            )
        self.low_ = np.percentile(x, self.low, axis=0)
        self.high_ = np.percentile(x, self.high, axis=0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return scale_to_unit(x, self.low_, self.high_)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)


class BoundsScaler:
    """Scaling with declared per-feature bounds (no data is looked at: post-processing only, as
    needed after a local-dp release)."""

    def __init__(self, lower: np.ndarray, upper: np.ndarray) -> None:
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        if self.lower.shape != self.upper.shape or np.any(self.upper < self.lower):
            raise ClusteringError("declared bounds: lower/upper differ in length or upper < lower")

    def fit(self, x: np.ndarray) -> BoundsScaler:
        if np.asarray(x).shape[1] != self.lower.size:
            raise ClusteringError(
                f"declared bounds cover {self.lower.size} features but the table has "
                f"{np.asarray(x).shape[1]}; use the bounds file of these columns"
            )
        self.low_ = self.lower.copy()
        self.high_ = self.upper.copy()
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return scale_to_unit(x, self.low_, self.high_)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)
