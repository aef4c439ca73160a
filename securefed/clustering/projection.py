"""Projections fixed before any study data is seen, mapping a case's features into [0, 1]^d.

Used by the secure-aggregate mode: features are scaled with the protocol's declared bounds to
[0, 1]^D, projected with a fixed matrix, clipped to declared projected bounds and rescaled to
[0, 1]^d. Every step is data-independent (or depends on a reference federation only), so the
sensitivity of the aggregates computed from the result is fixed in advance.

Sources: ``subset`` (named features; their declared bounds are the box), ``random`` (seeded
orthonormal rows; projected bounds from the box geometry, +-||w||_1 / 2: always valid but loose),
``file`` (a pinned JSON file, e.g. PCA of a reference federation, see :func:`derive_projection`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.clustering.scaling import scale_to_unit
from securefed.errors import ProtocolError

__all__ = ["PROJECTION_FORMAT", "FixedProjection", "derive_projection", "projection_for"]

PROJECTION_FORMAT = "securefed-projection"


@dataclass(frozen=True)
class FixedProjection:
    """``unit(x) -> clip(W (unit(x) - center), lower, upper)`` rescaled to [0, 1]^d."""

    columns: tuple[str, ...]
    feature_lower: np.ndarray  # (D,) declared bounds of the raw features
    feature_upper: np.ndarray
    center: np.ndarray  # (D,)
    matrix: np.ndarray  # (d, D)
    lower: np.ndarray  # (d,) declared bounds of the projected coordinates
    upper: np.ndarray
    source: str

    @property
    def dimension(self) -> int:
        return int(self.matrix.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Project the rows of ``x`` (columns = ``self.columns``) into [0, 1]^d."""
        u = scale_to_unit(x, self.feature_lower, self.feature_upper)
        y = (u - self.center) @ self.matrix.T
        return scale_to_unit(y, self.lower, self.upper)

    def to_json_bytes(self) -> bytes:
        doc = {
            "format": PROJECTION_FORMAT,
            "version": 1,
            "source": self.source,
            "columns": list(self.columns),
            "center": self.center.tolist(),
            "matrix": self.matrix.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
        }
        return (json.dumps(doc, allow_nan=False) + "\n").encode()


def derive_projection(
    reference_unit: np.ndarray,
    columns: Sequence[str],
    feature_lower: np.ndarray,
    feature_upper: np.ndarray,
    dimension: int,
    *,
    source: str,
    margin: float = 0.1,
) -> FixedProjection:
    """PCA of a REFERENCE federation's unit-scaled features (never the study's data): the top
    ``dimension`` components and projected bounds at the reference min/max widened by ``margin``
    times the range on each side."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=dimension, random_state=0).fit(reference_unit)
    y = (reference_unit - pca.mean_) @ pca.components_.T
    lo, hi = y.min(0), y.max(0)
    pad = margin * (hi - lo)
    return FixedProjection(
        tuple(columns),
        np.asarray(feature_lower, float),
        np.asarray(feature_upper, float),
        pca.mean_,
        pca.components_,
        lo - pad,
        hi + pad,
        source,
    )


def _from_file(data: bytes, name: str, bounds: Any) -> FixedProjection:
    try:
        doc = json.loads(data.decode("utf-8"))
        assert doc["format"] == PROJECTION_FORMAT and doc["version"] == 1
        columns = tuple(doc["columns"])
        proj = FixedProjection(
            columns,
            bounds.select(columns, name).lower,
            bounds.select(columns, name).upper,
            np.asarray(doc["center"], float),
            np.asarray(doc["matrix"], float),
            np.asarray(doc["lower"], float),
            np.asarray(doc["upper"], float),
            str(doc["source"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ProtocolError(f"{name}: not a {PROJECTION_FORMAT} v1 file ({exc!r})") from exc
    d, big_d = proj.matrix.shape
    if proj.center.shape != (big_d,) or proj.lower.shape != (d,) or proj.upper.shape != (d,):
        raise ProtocolError(f"{name}: matrix/center/lower/upper shapes do not agree")
    if np.any(proj.upper <= proj.lower):
        raise ProtocolError(f"{name}: projected bounds need lower < upper")
    return proj


def projection_for(loaded: Any, columns: Sequence[str]) -> FixedProjection:
    """The protocol's fixed projection for feature ``columns`` (``release.projection``: subset,
    random or file; ``none`` is refused: the secure mode needs a low dimension)."""
    from securefed.privacy.bounds import load_pinned_bounds
    from securefed.protocol import open_pinned

    release = loaded.protocol.release
    bounds = load_pinned_bounds(loaded)
    if release.projection == "none":
        raise ProtocolError(
            "release.projection: the secure-aggregate clustering needs a fixed low-dimensional "
            "projection ('subset', 'random' or 'file'); 'none' would keep all features"
        )
    if release.projection == "file":
        pinned = release.projection_file
        data = open_pinned(loaded, pinned, "release.projection_file")
        proj = _from_file(data, str(loaded.resolve(pinned.file)), bounds)
        missing = [c for c in proj.columns if c not in set(columns)]
        if missing:
            raise ProtocolError(f"release.projection_file: column {missing[0]!r} not in the table")
        return proj
    bounds.check_columns(columns, "release.bounds")
    big_d = len(columns)
    if release.projection == "subset":
        idx = [list(columns).index(c) for c in release.subset if c in columns]
        if len(idx) != len(release.subset):
            raise ProtocolError("release.subset: some features are not columns of the table")
        matrix = np.zeros((len(idx), big_d))
        matrix[np.arange(len(idx)), idx] = 1.0
        center = np.zeros(big_d)
        lower, upper = np.zeros(len(idx)), np.ones(len(idx))
        source = f"subset of {len(idx)} features"
    else:
        d = int(release.dimension)
        rng = np.random.default_rng(release.projection_seed)
        q, _ = np.linalg.qr(rng.standard_normal((big_d, d)))
        matrix = q.T
        center = np.full(big_d, 0.5)
        half = 0.5 * np.abs(matrix).sum(1)
        lower, upper = -half, half
        source = f"seeded random orthonormal projection (seed {release.projection_seed})"
    return FixedProjection(
        tuple(columns), bounds.lower, bounds.upper, center, matrix, lower, upper, source
    )
