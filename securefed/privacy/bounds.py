"""Per-feature clipping bounds: derive them from reference data, write, load and check them.

A bounds file is public (it ships with the protocol, pinned by its SHA-256). It must be derived
from data that is not the study's (a synthetic or public reference federation) and its header says
where it came from. Nothing in it is computed from a site's own cases.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from securefed import __version__
from securefed.errors import PrivacyError, ProtocolError
from securefed.fileio import atomic_write_bytes
from securefed.protocol import LoadedProtocol

__all__ = [
    "BOUNDS_FORMAT",
    "BOUNDS_VERSION",
    "Bounds",
    "bounds_from_bytes",
    "derive_bounds",
    "load_pinned_bounds",
    "read_bounds",
    "write_bounds",
]

BOUNDS_FORMAT = "securefed-bounds"
BOUNDS_VERSION = 1


@dataclass(frozen=True)
class Bounds:
    """Declared per-column [lower, upper] box (lower < upper, finite) plus its header."""

    columns: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    source: str
    created_at: str = ""
    securefed_version: str = __version__
    method: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lower = np.asarray(self.lower, dtype=np.float64).copy()
        upper = np.asarray(self.upper, dtype=np.float64).copy()
        n = len(self.columns)
        if lower.shape != (n,) or upper.shape != (n,):
            raise PrivacyError(
                f"bounds: {n} columns but lower/upper have shapes {lower.shape}/{upper.shape}"
            )
        if len(set(self.columns)) != n:
            raise PrivacyError("bounds: repeated column names")
        bad = ~(np.isfinite(lower) & np.isfinite(upper) & (lower < upper))
        if bad.any():
            name = self.columns[int(np.flatnonzero(bad)[0])]
            raise PrivacyError(
                f"bounds: column {name!r} needs finite lower < upper "
                f"({int(bad.sum())} bad column(s)); regenerate the bounds file"
            )
        lower.flags.writeable = False
        upper.flags.writeable = False
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    @property
    def width(self) -> np.ndarray:
        return self.upper - self.lower

    def check_columns(self, columns: Sequence[str], where: str) -> None:
        """Raise unless ``columns`` equals the bounds' columns (same names, same order)."""
        columns = tuple(columns)
        if columns == self.columns:
            return
        missing = [c for c in columns if c not in set(self.columns)]
        extra = [c for c in self.columns if c not in set(columns)]
        detail = []
        if missing:
            detail.append(f"{len(missing)} column(s) without bounds (first: {missing[0]!r})")
        if extra:
            detail.append(f"{len(extra)} bounded column(s) absent (first: {extra[0]!r})")
        if not detail:
            detail.append("same names in a different order")
        raise PrivacyError(
            f"{where}: feature columns do not match the bounds file ({'; '.join(detail)}); "
            "derive bounds with the same radiomics settings as the study"
        )

    def select(self, names: Sequence[str], where: str) -> Bounds:
        """The bounds restricted to ``names`` (in that order)."""
        index = {c: i for i, c in enumerate(self.columns)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise PrivacyError(f"{where}: {unknown[0]!r} is not a column of the bounds file")
        idx = [index[n] for n in names]
        return Bounds(
            tuple(names),
            self.lower[idx],
            self.upper[idx],
            self.source,
            self.created_at,
            self.securefed_version,
            dict(self.method),
        )

    def to_json_bytes(self) -> bytes:
        doc = {
            "format": BOUNDS_FORMAT,
            "version": BOUNDS_VERSION,
            "source": self.source,
            "created_at": self.created_at,
            "securefed_version": self.securefed_version,
            "method": self.method,
            "columns": [
                {"name": c, "lower": float(lo), "upper": float(hi)}
                for c, lo, hi in zip(self.columns, self.lower, self.upper, strict=True)
            ],
        }
        return (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("utf-8")


def derive_bounds(
    matrix: np.ndarray,
    columns: Sequence[str],
    *,
    source: str,
    low_pct: float = 0.0,
    high_pct: float = 100.0,
    margin: float = 0.0,
) -> Bounds:
    """Bounds per column from a reference matrix (rows = cases): the [low_pct, high_pct]
    percentiles, widened by ``margin`` times the width on each side. A constant column gets a tiny
    positive width. ``source`` must say what the data is (and that it is not study data)."""
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(columns) or x.shape[0] < 1:
        raise PrivacyError(f"derive_bounds: matrix {x.shape} does not fit {len(columns)} columns")
    if not np.isfinite(x).all():
        raise PrivacyError("derive_bounds: the reference matrix has NaN or infinite values")
    if not 0 <= low_pct < high_pct <= 100:
        raise PrivacyError(
            f"derive_bounds: need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}"
        )
    if not source.strip():
        raise PrivacyError("derive_bounds: source must describe the reference data")
    lo = np.percentile(x, low_pct, axis=0)
    hi = np.percentile(x, high_pct, axis=0)
    pad = margin * (hi - lo)
    lo, hi = lo - pad, hi + pad
    degenerate = hi <= lo
    eps = np.maximum(np.abs(lo) * 1e-6, 1e-9)
    hi = np.where(degenerate, lo + eps, hi)
    method = {
        "low_pct": low_pct,
        "high_pct": high_pct,
        "margin": margin,
        "reference_rows": int(x.shape[0]),
        "degenerate_columns": int(degenerate.sum()),
    }
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    return Bounds(tuple(columns), lo, hi, source, created, __version__, method)


def bounds_from_bytes(data: bytes, name: str) -> Bounds:
    """Parse a bounds file's bytes; ``name`` is used in error messages."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrivacyError(f"{name}: not a JSON bounds file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != BOUNDS_FORMAT:
        raise PrivacyError(f"{name}: not a securefed bounds file (format != {BOUNDS_FORMAT!r})")
    if doc.get("version") != BOUNDS_VERSION:
        raise PrivacyError(
            f"{name}: bounds format version {doc.get('version')!r} is not "
            f"supported (expected {BOUNDS_VERSION})"
        )
    try:
        cols = doc["columns"]
        names = tuple(str(c["name"]) for c in cols)
        lower = np.array([float(c["lower"]) for c in cols], dtype=np.float64)
        upper = np.array([float(c["upper"]) for c in cols], dtype=np.float64)
        source = str(doc["source"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PrivacyError(f"{name}: malformed bounds file ({exc!r})") from exc
    try:
        return Bounds(
            names,
            lower,
            upper,
            source,
            str(doc.get("created_at", "")),
            str(doc.get("securefed_version", "")),
            dict(doc.get("method", {})),
        )
    except PrivacyError as exc:
        raise PrivacyError(f"{name}: {exc}") from exc


def read_bounds(path: str | Path) -> Bounds:
    """Read an (unpinned) bounds file; for study use prefer :func:`load_pinned_bounds`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PrivacyError(f"{path}: cannot read bounds file ({exc.strerror})") from exc
    return bounds_from_bytes(data, str(path))


def write_bounds(bounds: Bounds, path: str | Path) -> str:
    """Write atomically; return the ``sha256:<hex>`` to pin in the protocol."""
    data = bounds.to_json_bytes()
    atomic_write_bytes(path, data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_pinned_bounds(loaded: LoadedProtocol) -> Bounds:
    """The protocol's ``release.bounds`` file, after its SHA-256 check."""
    from securefed.protocol import open_pinned

    pinned = loaded.protocol.release.bounds
    if pinned is None:
        raise ProtocolError("release.bounds: the protocol declares no bounds file")
    data = open_pinned(loaded, pinned, "release.bounds")
    bounds = bounds_from_bytes(data, str(loaded.resolve(pinned.file)))
    if not math.isfinite(float(bounds.width.max(initial=0.0))):
        raise PrivacyError("release.bounds: infinite width")
    return bounds
