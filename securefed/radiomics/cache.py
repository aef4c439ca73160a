"""Per-case extraction cache under FEATDIR/.cache: a rerun is instant, an interrupted run resumes.

Each entry is one small JSON file named by a key: the SHA-256 of the case's file contents (the four
images, plus the seg when the mask needs it), the extraction settings, the shared bin edges (when
used), the pyradiomics version and :data:`CACHE_VERSION`. Changing any of them changes the key, so
stale entries are never reused. Writes are atomic; an unreadable or inconsistent entry is treated
as a miss and rewritten. The cache is site-local (raw features and intensity ranges).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from securefed.fileio import canonical_sha256
from securefed.protocol.schema import MODALITIES, RadiomicsSpec
from securefed.radiomics.storage import atomic_write_bytes

__all__ = [
    "CACHE_DIR",
    "CACHE_VERSION",
    "content_key",
    "features_key",
    "file_sha256",
    "ranges_key",
    "read_features",
    "read_ranges",
    "write_features",
    "write_ranges",
]

CACHE_DIR = ".cache"
CACHE_VERSION = 1
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_key(files: Mapping[str, Path], *, with_seg: bool) -> str:
    """SHA-256 over the contents of the case's images (flair, t1, t1ce, t2) and, if asked, seg."""
    keys = [*MODALITIES, "seg"] if with_seg else list(MODALITIES)
    digest = hashlib.sha256()
    for key in keys:
        digest.update(f"{key}={file_sha256(files[key])}\n".encode())
    return digest.hexdigest()


def pyradiomics_version() -> str:
    """The installed pyradiomics version (recorded in manifests and cache keys)."""
    import radiomics

    return str(radiomics.__version__)


def _key(kind: str, content: str, settings: Mapping[str, Any]) -> str:
    payload = {
        "kind": kind,
        "content": content,
        "settings": dict(settings),
        "pyradiomics": pyradiomics_version(),
        "cache_version": CACHE_VERSION,
    }
    return canonical_sha256(payload, prefix="")


def features_key(
    content: str, spec: RadiomicsSpec, edges: Mapping[str, Sequence[float]] | None
) -> str:
    """Key of a case's feature vector (content + settings + shared edges + versions)."""
    settings: dict[str, Any] = spec.model_dump(mode="json")
    settings["edges"] = None if edges is None else {m: list(edges[m]) for m in MODALITIES}
    return _key("features", content, settings)


def ranges_key(content: str, spec: RadiomicsSpec) -> str:
    """Key of a case's masked intensity ranges (depends on preprocessing settings only)."""
    return _key("ranges", content, {"mask": spec.mask, "normalisation": spec.normalisation})


def _read(path: Path, key: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    return entry


def _write(path: Path, entry: Mapping[str, Any]) -> None:
    text = json.dumps(entry, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, text.encode("utf-8"))


def read_features(cache_dir: Path, key: str, columns: Sequence[str]) -> np.ndarray | None:
    """The cached vector for ``key`` (None on a miss or an inconsistent entry)."""
    entry = _read(Path(cache_dir) / f"features-{key}.json", key)
    if entry is None or entry.get("columns") != list(columns):
        return None
    try:
        values = np.asarray(entry["values"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if values.shape != (len(columns),) or not np.all(np.isfinite(values)):
        return None
    return values


def write_features(cache_dir: Path, key: str, columns: Sequence[str], values: np.ndarray) -> None:
    """Store a vector atomically (floats are written with their exact repr)."""
    entry = {"key": key, "columns": list(columns), "values": [float(v) for v in values]}
    _write(Path(cache_dir) / f"features-{key}.json", entry)


def read_ranges(cache_dir: Path, key: str) -> dict[str, tuple[float, float]] | None:
    entry = _read(Path(cache_dir) / f"ranges-{key}.json", key)
    if entry is None:
        return None
    try:
        ranges = {
            m: (float(entry["ranges"][m][0]), float(entry["ranges"][m][1])) for m in MODALITIES
        }
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return ranges


def write_ranges(cache_dir: Path, key: str, ranges: Mapping[str, tuple[float, float]]) -> None:
    entry = {"key": key, "ranges": {m: list(ranges[m]) for m in MODALITIES}}
    _write(Path(cache_dir) / f"ranges-{key}.json", entry)
