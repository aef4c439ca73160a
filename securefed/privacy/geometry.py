"""The released coordinates of a case, fixed by the protocol before any study data is seen.

Every release is an affine map of the case's box-normalised features ``u`` in [0, 1]^D followed
by a clip to [0, 1]^d:

- ``none`` / ``subset``: the (selected) coordinates of ``u`` themselves;
- ``random``: seeded orthonormal rows W (QR of a seeded Gaussian matrix), ``W (u - 1/2)`` scaled
  from its box-geometry bounds (+-||w_i||_1 / 2, always valid) to [0, 1];
- ``file``: a pinned ``securefed-projection`` v1 JSON file (center, matrix, lower, upper; e.g. a
  PCA of a reference federation), scaled from its declared bounds to [0, 1] and clipped.

This module is the one definition of the release maps; ``securefed.clustering.fixed_projection``
is a view over it, so the site's release and the server's secure clustering read a protocol the same
way. Sensitivity (see ``sensitivity.py``) follows
from the map alone: clipping to a box is non-expansive, so the L2 distance between two released
vectors is at most min(||A||_2 sqrt(D), sqrt(d)) with A the linear part of the map.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from securefed.errors import ProtocolError
from securefed.privacy.bounds import Bounds
from securefed.privacy.clipping import from_unit_box, to_unit_box
from securefed.protocol import LoadedProtocol

__all__ = [
    "PROJECTION_FORMAT",
    "ProjectionFile",
    "ReleaseGeometry",
    "identity_geometry",
    "random_geometry",
    "release_geometry",
]

PROJECTION_FORMAT = "securefed-projection"


@dataclass(frozen=True)
class ReleaseGeometry:
    """``release(x) = clip(A @ to_unit_box(x) + b, 0, 1)``; columns named ``columns``."""

    kind: str
    bounds: Bounds  # bounds of the input columns (all feature columns of the table)
    linear: np.ndarray  # A, shape (d, D)
    offset: np.ndarray  # b, shape (d,)
    columns: tuple[str, ...]  # released column names
    selected: tuple[int, ...] | None  # input column indices when the map is a selection
    source: str
    file: ProjectionFile | None = None  # the pinned file's own parameters (``file`` only)

    @property
    def dimension(self) -> int:
        return int(self.linear.shape[0])

    def to_release_space(self, matrix: np.ndarray) -> np.ndarray:
        """Clip to bounds, normalise, map and clip to [0, 1]^d (rows = cases)."""
        u = to_unit_box(np.asarray(matrix, dtype=np.float64), self.bounds)
        if self.selected is not None:
            return u[:, list(self.selected)]
        return np.clip(u @ self.linear.T + self.offset, 0.0, 1.0)

    def to_output_units(self, released: np.ndarray) -> np.ndarray:
        """Post-processing of release-space values: raw feature units for ``none``/``subset``,
        [0, 1] projected coordinates otherwise."""
        if self.selected is None:
            return np.asarray(released, dtype=np.float64)
        return from_unit_box(released, self.output_bounds())

    def output_bounds(self) -> Bounds:
        """Declared bounds of the released columns (for the server's declared-bounds scaling)."""
        if self.selected is not None:
            return self.bounds.select([self.bounds.columns[i] for i in self.selected], self.kind)
        d = self.dimension
        return Bounds(self.columns, np.zeros(d), np.ones(d), f"{self.source}: unit box")


def _affine_geometry(
    kind: str,
    bounds: Bounds,
    center: np.ndarray,
    w: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    source: str,
    file: ProjectionFile | None = None,
) -> ReleaseGeometry:
    if np.any(hi <= lo):
        raise ProtocolError(f"release.projection ({kind}): projected bounds need lower < upper")
    scale = 1.0 / (hi - lo)
    linear = w * scale[:, None]
    offset = -(w @ center + lo) * scale
    d = w.shape[0]
    columns = tuple(f"proj_{i:03d}" for i in range(d))
    return ReleaseGeometry(kind, bounds, linear, offset, columns, None, source, file)


@dataclass(frozen=True)
class ProjectionFile:
    """A ``securefed-projection`` v1 file: the map
    ``clip((matrix (u - center) - lower) / (upper - lower), 0, 1)`` of the box-normalised
    features ``u`` (columns ``columns``). The one reader and writer of the format: the release
    and the secure clustering (:mod:`securefed.clustering.fixed_projection`) both use it."""

    source: str
    columns: tuple[str, ...]
    center: np.ndarray  # (D,)
    matrix: np.ndarray  # (d, D)
    lower: np.ndarray  # (d,) declared bounds of the projected coordinates
    upper: np.ndarray

    @classmethod
    def parse(cls, data: bytes, name: str) -> ProjectionFile:
        """Read and check a projection file (format, shapes, finite values); ``name`` for the
        errors."""
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("format") != PROJECTION_FORMAT or doc.get("version") != 1:
                raise ValueError(f"format must be {PROJECTION_FORMAT!r} version 1")
            columns = tuple(str(c) for c in doc["columns"])
            center = np.asarray(doc["center"], dtype=np.float64)
            w = np.asarray(doc["matrix"], dtype=np.float64)
            lo = np.asarray(doc["lower"], dtype=np.float64)
            hi = np.asarray(doc["upper"], dtype=np.float64)
            source = str(doc["source"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"{name}: not a {PROJECTION_FORMAT} v1 file ({exc})") from exc
        big_d = len(columns)
        if w.ndim != 2 or w.shape[1] != big_d or center.shape != (big_d,):
            raise ProtocolError(
                f"{name}: matrix {w.shape} / center {center.shape} do not fit {big_d} columns"
            )
        if lo.shape != (w.shape[0],) or hi.shape != lo.shape:
            raise ProtocolError(f"{name}: lower/upper need {w.shape[0]} values")
        if not all(np.isfinite(a).all() for a in (center, w, lo, hi)):
            raise ProtocolError(f"{name}: non-finite values")
        return cls(source, columns, center, w, lo, hi)

    def to_json_bytes(self) -> bytes:
        """The file's bytes (the keys in the format's order, one line)."""
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

    def geometry(self, bounds: Bounds, name: str) -> ReleaseGeometry:
        """The release map of this file over the declared feature ``bounds`` (same columns)."""
        if self.columns != bounds.columns:
            raise ProtocolError(f"{name}: its columns differ from the bounds file's columns")
        return _affine_geometry(
            "file", bounds, self.center, self.matrix, self.lower, self.upper, self.source, self
        )


def identity_geometry(bounds: Bounds, names: Sequence[str] | None = None) -> ReleaseGeometry:
    """Release the box-normalised features (all, or the columns ``names``)."""
    names = bounds.columns if names is None else tuple(names)
    index = {c: i for i, c in enumerate(bounds.columns)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ProtocolError(f"release.subset: {missing[0]!r} is not a column of the bounds file")
    idx = tuple(index[n] for n in names)
    linear = np.zeros((len(idx), len(bounds.columns)))
    linear[np.arange(len(idx)), list(idx)] = 1.0
    kind = "none" if names == bounds.columns else "subset"
    return ReleaseGeometry(
        kind, bounds, linear, np.zeros(len(idx)), tuple(names), idx, f"{len(idx)} declared features"
    )


def random_geometry(bounds: Bounds, dimension: int, seed: int) -> ReleaseGeometry:
    """Seeded orthonormal projection of the box-normalised features to ``dimension`` coordinates,
    scaled from its box-geometry bounds (+-||w_i||_1 / 2) to [0, 1]."""
    big_d = len(bounds.columns)
    if dimension > big_d:
        raise ProtocolError(f"release.dimension ({dimension}) exceeds the {big_d} feature columns")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((big_d, dimension)))
    w = q.T
    half = 0.5 * np.abs(w).sum(axis=1)
    return _affine_geometry(
        "random",
        bounds,
        np.full(big_d, 0.5),
        w,
        -half,
        half,
        f"seeded random orthonormal projection (seed {seed})",
    )


def release_geometry(loaded: LoadedProtocol, bounds: Bounds) -> ReleaseGeometry:
    """The geometry the protocol (``LoadedProtocol``) declares for its feature release."""
    release = loaded.protocol.release
    if release.projection in ("none", "subset"):
        geo = identity_geometry(bounds, release.subset if release.projection == "subset" else None)
    elif release.projection == "random":
        if release.dimension is None:
            raise ProtocolError("release.projection 'random' needs release.dimension")
        geo = random_geometry(bounds, int(release.dimension), release.projection_seed)
    else:
        from securefed.protocol import open_pinned

        pinned = release.projection_file
        if pinned is None:
            raise ProtocolError("release.projection 'file' needs release.projection_file")
        data = open_pinned(loaded, pinned, "release.projection_file")
        name = str(loaded.resolve(pinned.file))
        geo = ProjectionFile.parse(data, name).geometry(bounds, name)
    if release.dimension is not None and release.dimension != geo.dimension:
        raise ProtocolError(
            f"release.dimension ({release.dimension}) differs from the "
            f"{geo.dimension} released coordinates of projection "
            f"{release.projection!r}"
        )
    return geo
