"""Protect a site's feature table according to the protocol's release mode.

What leaves the site (after sealing by the transport layer) is exactly a ``ReleasedFeatures``:
subject ids, splits, partition ids, the released column names, one float64 row per case and the
metadata (mode, mechanism, epsilon, delta, sigma or scale, sensitivity, dimension, projection,
noise source, release id, protocol hash, site). Nothing else of the raw table is included.

- ``plain`` (the paper): the raw values (or the protocol's fixed subset/projection of them), no
  noise, no ledger charge, epsilon = inf.
- ``local-dp``: clip to the pinned bounds, map to the declared release space (subset or
  projection), calibrate sigma (Gaussian, Balle-Wang) or the scale (Laplace) for the release's
  (epsilon, delta) and the derived sensitivity, charge the ledger (refused before any noise if the
  budget would be exceeded), draw the noise from the OS CSPRNG, then map back to output units.
  One charge covers the whole table: each case's row is noised independently and the unit of
  privacy is one patient, so the release is (epsilon, delta)-DP per patient (parallel
  composition).
- ``secure-aggregate``: no per-case vector leaves the site; refused here (see clustering).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dp_accounting
import numpy as np

from securefed.errors import DataError, PrivacyError, ProtocolError
from securefed.privacy.bounds import Bounds, load_pinned_bounds
from securefed.privacy.calibration import discrete_gaussian_sigma, laplace_scale
from securefed.privacy.geometry import ReleaseGeometry, identity_geometry, release_geometry
from securefed.privacy.ledger import Ledger
from securefed.privacy.noise import noise_source_for
from securefed.privacy.sensitivity import local_sensitivity
from securefed.protocol import LoadedProtocol

__all__ = [
    "FEATURES_STAGE",
    "ReleasedFeatures",
    "new_release_id",
    "protect_features",
    "release_space",
    "released_bounds",
]

FEATURES_STAGE = "features"
GRID = 2.0**-12  # release grid of the unit box (an exact power of two)


@dataclass(frozen=True)
class ReleasedFeatures:
    """The protected table: the only form of a site's features that may be sealed and sent."""

    subject_ids: tuple[str, ...]
    columns: tuple[str, ...]
    matrix: np.ndarray  # float64, (cases, columns)
    splits: tuple[str, ...] | None
    partition_ids: tuple[int, ...] | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def epsilon(self) -> float:
        return float(self.metadata["epsilon"])


def _unpack(table: Any) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray, Any, Any]:
    if isinstance(table, tuple):
        if len(table) not in (3, 4):
            raise DataError("feature table: pass (subject_ids, columns, matrix[, splits])")
        ids, columns, matrix = table[:3]
        splits = table[3] if len(table) == 4 else None
        parts = None
    else:
        ids, columns = table.subject_ids, table.columns
        matrix = table.values if hasattr(table, "values") else table.matrix
        splits = getattr(table, "splits", None)
        parts = getattr(table, "partition_ids", None)
    ids, columns = tuple(str(s) for s in ids), tuple(str(c) for c in columns)
    x = np.array(matrix, dtype=np.float64, copy=True)
    if x.ndim != 2 or x.shape != (len(ids), len(columns)):
        raise DataError(
            f"feature table: matrix {x.shape} does not match {len(ids)} cases x "
            f"{len(columns)} columns"
        )
    if not np.isfinite(x).all():
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise DataError(
            f"feature table: case {ids[r]}, feature {columns[c]} is not finite; "
            "fix the extraction (a failed feature must never be released)"
        )
    splits = tuple(str(s) for s in splits) if splits is not None else None
    parts = tuple(int(p) for p in parts) if parts is not None else None
    return ids, columns, x, splits, parts


def new_release_id(stage: str = FEATURES_STAGE) -> str:
    """A fresh release id: 128 bits from the OS CSPRNG. It travels in the sealed metadata, so it
    must not depend on the data (a hash of the data would tell neighbouring datasets apart)."""
    return f"{stage}-{secrets.token_hex(16)}"


def released_bounds(loaded: LoadedProtocol) -> Bounds:
    """Declared bounds of the released columns under the protocol (for server-side scaling with
    ``clustering.scaling = 'declared-bounds'``)."""
    return release_geometry(loaded, load_pinned_bounds(loaded)).output_bounds()


def protect_features(
    table: Any,
    loaded_protocol: LoadedProtocol,
    ledger: Ledger | None,
    site_id: str,
    *,
    release_id: str | None = None,
    write: Callable[[ReleasedFeatures], None] | None = None,
    unsafe_seed: int | None = None,
) -> ReleasedFeatures:
    """Apply the protocol's release mode to a site's raw features.

    ``table``: ``(subject_ids, columns, matrix[, splits])`` or an object with ``subject_ids``,
    ``columns``, ``values`` (or ``matrix``) and optionally ``splits`` and ``partition_ids``.
    ``write``: called with the result inside the ledger charge, before the commit entry: write
    the release (or its sealed envelope) to disk there, and send it only after this returns.
    ``release_id``: the id of this release in the ledger and in the metadata; a fresh random one
    (:func:`new_release_id`) when not given, never derived from the data. Retrying with the id of
    an uncommitted intent reuses that charge; a committed id is refused. (A retry must resend the
    bytes it wrote the first time, not call this again: :mod:`securefed.site.release` keeps them.)
    Returns what may leave the site (see the module docstring)."""
    protocol = loaded_protocol.protocol
    spec = protocol.release
    ids, columns, x, splits, parts = _unpack(table)
    base = {
        "mode": spec.mode,
        "protocol": loaded_protocol.sha256,
        "site": site_id,
        "neighbouring": protocol.privacy.neighbouring,
        "unit": protocol.privacy.unit,
    }
    if spec.mode == "secure-aggregate":
        raise PrivacyError(
            "release.mode 'secure-aggregate': no per-case features leave the site; "
            "run the secure clustering instead of a feature release"
        )
    if spec.mode == "plain":
        geo = _plain_geometry(loaded_protocol, columns)
        out = geo.to_output_units(geo.to_release_space(x)) if geo is not None else x
        cols = geo.columns if geo is not None else columns
        meta = {
            **base,
            "mechanism": None,
            "epsilon": math.inf,
            "delta": 0.0,
            "projection": spec.projection,
            "dimension": len(cols),
        }
        released = ReleasedFeatures(ids, cols, out, splits, parts, meta)
        if write is not None:
            write(released)
        return released

    if ledger is None:
        raise PrivacyError("release.mode 'local-dp' needs the site ledger")
    bounds = load_pinned_bounds(loaded_protocol)
    bounds.check_columns(columns, "release.bounds")
    plan = local_dp_plan(loaded_protocol)
    geo, eps, delta, event = plan.geometry, plan.epsilon, plan.delta, plan.event
    scale_meta = plan.metadata()
    scale_grid = plan.scale / GRID  # exact: GRID is a power of two
    rid = release_id or new_release_id()
    y = np.rint(geo.to_release_space(x) / GRID).astype(np.int64)  # clipped, on the grid
    # Seeded (simulation-only, never private) noise is keyed by site and stage, not by the
    # random release id, so a seeded study stays reproducible.
    source = noise_source_for(protocol, site_id, FEATURES_STAGE, unsafe_seed=unsafe_seed)
    with ledger.charge(FEATURES_STAGE, rid, event, (eps, delta)) as handle:
        if spec.mechanism == "gaussian":
            noise = source.discrete_gaussian(scale_grid, y.shape)
        else:
            noise = source.discrete_laplace(scale_grid, y.shape)
        meta = {
            **base,
            **scale_meta,
            "mechanism": spec.mechanism,
            "sampler": f"discrete {spec.mechanism} (OpenDP; Canonne-Kamath-Steinke) on a "
            f"2^{int(math.log2(GRID))} grid of the unit box",
            "grid": GRID,
            "epsilon": eps,
            "delta": delta,
            "projection": geo.kind,
            "projection_source": geo.source,
            "dimension": geo.dimension,
            "release_space": "unit box [0, 1]^d (noise added there)",
            "noise_source": source.name,
            "release_id": rid,
            "site_spent_epsilon": handle.spent_epsilon,
        }
        on_grid = (y + noise).astype(np.float64) * GRID  # exact: integers times a power of two
        released = ReleasedFeatures(
            ids, geo.columns, geo.to_output_units(on_grid), splits, parts, meta
        )
        if write is not None:
            write(released)
    return released


def release_space(
    loaded_protocol: LoadedProtocol, columns: Sequence[str], matrix: np.ndarray
) -> np.ndarray:
    """A site's OWN vectors mapped, without noise, into the columns and units its releases use
    (clip + subset/projection exactly as :func:`protect_features` does), so the site can assign
    its cases locally with the server's clustering model. The result never leaves the site and
    is never charged: no noise is drawn and nothing is released."""
    cols = tuple(columns)
    x = np.asarray(matrix, dtype=np.float64)
    if loaded_protocol.protocol.release.mode == "plain":
        geo = _plain_geometry(loaded_protocol, cols)
        return geo.to_output_units(geo.to_release_space(x)) if geo is not None else x
    bounds = load_pinned_bounds(loaded_protocol)
    bounds.check_columns(cols, "release.bounds")
    geo = release_geometry(loaded_protocol, bounds)
    return geo.to_output_units(geo.to_release_space(x))


def _plain_geometry(loaded: LoadedProtocol, columns: tuple[str, ...]) -> ReleaseGeometry | None:
    """Plain releases apply the protocol's fixed subset/projection too (no noise)."""
    spec = loaded.protocol.release
    if spec.projection == "none":
        return None
    if spec.projection == "subset":
        missing = [c for c in spec.subset if c not in columns]
        if missing:
            raise PrivacyError(f"release.subset: {missing[0]!r} is not a feature column")
        # A plain subset is a selection only: no clipping, the bounds box is not used.
        neutral = Bounds(columns, np.zeros(len(columns)), np.ones(len(columns)), "selection")
        return _Selection(identity_geometry(neutral, spec.subset))
    bounds = load_pinned_bounds(loaded)
    bounds.check_columns(columns, "release.bounds")
    return release_geometry(loaded, bounds)


class _Selection(ReleaseGeometry):
    """A plain subset without bounds: select columns, nothing else (no clipping)."""

    def __init__(self, geo: ReleaseGeometry) -> None:
        super().__init__(**{f: getattr(geo, f) for f in ReleaseGeometry.__dataclass_fields__})

    def to_release_space(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(matrix, dtype=np.float64)[:, list(self.selected or ())]

    def to_output_units(self, released: np.ndarray) -> np.ndarray:
        return released


def released_columns(loaded_protocol: LoadedProtocol) -> tuple[str, ...]:
    """The column names every feature release under the protocol carries (what the server
    checks each envelope against): the protocol's radiomic columns, or its subset or projection."""
    from securefed.radiomics.names import columns as feature_columns

    cols = feature_columns(loaded_protocol.protocol.radiomics.feature_classes)
    if loaded_protocol.protocol.release.mode == "plain":
        geo = _plain_geometry(loaded_protocol, cols)
        return geo.columns if geo is not None else cols
    bounds = load_pinned_bounds(loaded_protocol)
    return release_geometry(loaded_protocol, bounds).columns


@dataclass(frozen=True)
class LocalDpPlan:
    """Everything a local-dp release derives from the protocol before any data: the release
    geometry, the sensitivity on the 2^-12 grid and the noise scale (unit-box units)."""

    geometry: ReleaseGeometry
    mechanism: str
    epsilon: float
    delta: float
    sensitivity: float  # L2 (gaussian) or L1 (laplace), grid rounding included, unit-box units
    scale: float  # sigma (gaussian) or b (laplace), unit-box units
    event: Any

    def metadata(self) -> dict[str, float]:
        if self.mechanism == "gaussian":
            return {"sigma": self.scale, "l2_sensitivity": self.sensitivity}
        return {"scale": self.scale, "l1_sensitivity": self.sensitivity}


def local_dp_plan(loaded_protocol: LoadedProtocol) -> LocalDpPlan:
    """The noise of the protocol's local-dp release. The release lives on the grid GRID * Z^d
    of the unit box: values are rounded to it (deterministic, at most GRID/2 per coordinate, so
    the grid sensitivity grows by sqrt(d) in L2 and d in L1) and the noise is an exact discrete
    Gaussian / discrete Laplace on that grid."""
    protocol = loaded_protocol.protocol
    spec = protocol.release
    if spec.mode != "local-dp" or spec.epsilon is None:
        raise ProtocolError("release.mode 'local-dp' with release.epsilon is needed")
    geo = release_geometry(loaded_protocol, load_pinned_bounds(loaded_protocol))
    sens = local_sensitivity(geo, protocol.privacy.neighbouring)
    eps, delta = float(spec.epsilon), float(spec.delta)
    d = geo.dimension
    grid_l2, grid_l1 = sens.l2 / GRID + math.sqrt(d), sens.l1 / GRID + d
    if spec.mechanism == "gaussian":
        sigma_grid = discrete_gaussian_sigma(eps, delta, grid_l2)
        event: Any = dp_accounting.GaussianDpEvent(sigma_grid / grid_l2)
        return LocalDpPlan(geo, "gaussian", eps, delta, grid_l2 * GRID, sigma_grid * GRID, event)
    scale_grid = laplace_scale(eps, grid_l1)
    event = dp_accounting.LaplaceDpEvent(scale_grid / grid_l1)
    return LocalDpPlan(geo, "laplace", eps, delta, grid_l1 * GRID, scale_grid * GRID, event)
