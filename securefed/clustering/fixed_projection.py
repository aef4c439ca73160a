"""The fixed projection of the secure-aggregate clustering: a thin view of the release geometry.

The map itself (box-normalise with the declared bounds, affine map, clip to [0, 1]^d), the
``securefed-projection`` v1 file format (:class:`~securefed.privacy.geometry.ProjectionFile`, its
one reader and writer) and the seeded random construction all live in
:mod:`securefed.privacy.geometry` (the lower layer), so the local-dp release and the secure
clustering read a protocol's projection the same way. This module adds what the clustering needs
on top: refusing ``none`` (the secure mode needs a low dimension), checking the table's columns,
:func:`derive_projection` (PCA of a REFERENCE federation, never the study's data) and writing the
projection back as a file. Every step is data-independent, so the sensitivity of the aggregates
computed from the projected points is fixed in advance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from securefed.errors import ProtocolError
from securefed.privacy.bounds import Bounds
from securefed.privacy.geometry import (
    PROJECTION_FORMAT,
    ProjectionFile,
    ReleaseGeometry,
    release_geometry,
)
from securefed.protocol import LoadedProtocol

__all__ = ["PROJECTION_FORMAT", "FixedProjection", "derive_projection", "projection_for"]


@dataclass(frozen=True)
class FixedProjection:
    """A release geometry plus the ``securefed-projection`` parameters (center, matrix, lower,
    upper) that describe it: ``clip((W (unit(x) - center) - lower) / (upper - lower), 0, 1)``."""

    geometry: ReleaseGeometry
    center: np.ndarray  # (D,)
    matrix: np.ndarray  # (d, D)
    lower: np.ndarray  # (d,) declared bounds of the projected coordinates
    upper: np.ndarray

    @classmethod
    def from_geometry(cls, geometry: ReleaseGeometry) -> FixedProjection:
        """File parameters of ``geometry``: a pinned file's own, otherwise those of its affine map
        ``clip(A u + b, 0, 1)``: center 0, matrix A, bounds [-b, 1 - b]."""
        if geometry.file is not None:
            f = geometry.file
            return cls(geometry, f.center, f.matrix, f.lower, f.upper)
        offset = np.asarray(geometry.offset, dtype=np.float64)
        return cls(
            geometry,
            np.zeros(len(geometry.bounds.columns)),
            np.asarray(geometry.linear, dtype=np.float64),
            0.0 - offset,  # not -offset: a zero offset gives 0.0, not -0.0, in the file
            1.0 - offset,
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """Input feature columns, in the order ``__call__`` expects them."""
        return self.geometry.bounds.columns

    @property
    def feature_lower(self) -> np.ndarray:
        return self.geometry.bounds.lower

    @property
    def feature_upper(self) -> np.ndarray:
        return self.geometry.bounds.upper

    @property
    def source(self) -> str:
        return self.geometry.source

    @property
    def dimension(self) -> int:
        return self.geometry.dimension

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Project the rows of ``x`` (columns = ``self.columns``) into [0, 1]^d."""
        return self.geometry.to_release_space(x)

    def to_json_bytes(self) -> bytes:
        """The ``securefed-projection`` file of this projection (the release layer's writer)."""
        return ProjectionFile(
            self.source, self.columns, self.center, self.matrix, self.lower, self.upper
        ).to_json_bytes()


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
    times the range on each side. Read back through the release layer's file reader, so it is
    exactly what a protocol pinning its ``to_json_bytes()`` will use."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=dimension, random_state=0).fit(reference_unit)
    y = (reference_unit - pca.mean_) @ pca.components_.T
    lo, hi = y.min(0), y.max(0)
    pad = margin * (hi - lo)
    name = f"derived projection ({source})"
    derived = ProjectionFile(
        source, tuple(columns), pca.mean_, pca.components_, lo - pad, hi + pad
    ).to_json_bytes()
    bounds = Bounds(tuple(columns), feature_lower, feature_upper, source)
    geometry = ProjectionFile.parse(derived, name).geometry(bounds, name)
    return FixedProjection.from_geometry(geometry)


def projection_for(loaded: LoadedProtocol, columns: Sequence[str]) -> FixedProjection:
    """The protocol's fixed projection for feature ``columns`` (``release.projection``: subset,
    random or file, as :func:`securefed.privacy.geometry.release_geometry` reads it; ``none`` is
    refused: the secure mode needs a low dimension)."""
    from securefed.privacy.bounds import load_pinned_bounds

    release = loaded.protocol.release
    if release.projection == "none":
        raise ProtocolError(
            "release.projection: the secure-aggregate clustering needs a fixed low-dimensional "
            "projection ('subset', 'random' or 'file'); 'none' would keep all features"
        )
    bounds = load_pinned_bounds(loaded)
    if release.projection != "file":
        bounds.check_columns(columns, "release.bounds")
    # The one projection loader (pinned file, format, release.dimension) is the release layer's.
    geometry = release_geometry(loaded, bounds)
    if release.projection == "file":
        missing = [c for c in geometry.bounds.columns if c not in set(columns)]
        if missing:
            raise ProtocolError(f"release.projection_file: column {missing[0]!r} not in the table")
    return FixedProjection.from_geometry(geometry)
