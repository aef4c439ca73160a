"""Durable file writes and bounded JSON reads shared by every layer (the lowest layer, beside
errors.py).

``atomic_write_bytes``: readers see the old file or the new one, never a partial one (temporary
file created with ``mode`` in the same folder, fsync, ``os.replace``, fsync of the folder).
``write_exclusive``: the same, but refuses to replace an existing file.
``write_json_atomic`` / ``read_json``: plain JSON (no NaN), read with a size cap.
``canonical_json`` / ``canonical_sha256``: the sorted-key JSON bytes that are hashed, signed or
bound, and their SHA-256; ``entry_hash``: the hash of an entry of a hash-chained JSONL log (the
privacy ledger, the audit log).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from securefed.errors import DataError

__all__ = [
    "COMPACT",
    "MAX_JSON_BYTES",
    "SPACED",
    "atomic_write_bytes",
    "canonical_json",
    "canonical_sha256",
    "entry_hash",
    "fsync_dir",
    "jsonable",
    "read_json",
    "write_exclusive",
    "write_json_atomic",
]

MAX_JSON_BYTES = 64 * 1024 * 1024
COMPACT = (",", ":")
"""The separators of canonical JSON (no spaces)."""
SPACED = (", ", ": ")
"""``json.dumps``' default separators (for the formats that have always hashed them)."""


def fsync_dir(folder: str | Path) -> None:
    """Flush a directory entry (after a rename) so that it survives a crash."""
    with contextlib.suppress(OSError):  # some file systems do not allow fsync on directories
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # not subject to the umask
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically and durably (creates the parent folder; the file
    gets ``mode``, 0600 unless said otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_exclusive(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``data`` atomically, refusing to replace an existing file
    (raises FileExistsError). The file is created with O_EXCL and ``mode`` from the start."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, NaN to None, inf to "inf"/"-inf"."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return jsonable(value.tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | Path, data: Any, *, sort_keys: bool = False) -> None:
    """Write ``data`` as indented JSON, atomically and durably (NaN/inf made plain first)."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(
    value: Any,
    *,
    separators: tuple[str, str] = COMPACT,
    ensure_ascii: bool = True,
    allow_nan: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> bytes:
    """``value`` as canonical JSON: keys sorted, ``separators`` (compact by default), UTF-8.

    Hashes of protocols, logs, envelope headers and cache keys are contracts: a caller keeps
    the options its format has always used (``separators=(", ", ": ")`` is ``json.dumps``'
    default spacing), so the bytes, and every hash of them, stay the same."""
    text = json.dumps(
        value,
        sort_keys=True,
        separators=separators,
        ensure_ascii=ensure_ascii,
        allow_nan=allow_nan,
        default=default,
    )
    return text.encode("utf-8")


def canonical_sha256(
    value: Any,
    *,
    prefix: str = "sha256:",
    separators: tuple[str, str] = COMPACT,
    ensure_ascii: bool = True,
    allow_nan: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``prefix`` + the hex SHA-256 of :func:`canonical_json` of ``value`` (``prefix=""`` for the
    bare hex digest)."""
    data = canonical_json(
        value, separators=separators, ensure_ascii=ensure_ascii, allow_nan=allow_nan,
        default=default,
    )  # fmt: skip
    return prefix + hashlib.sha256(data).hexdigest()


def entry_hash(entry: Mapping[str, Any], *, field: str = "hash") -> str:
    """The hash of one entry of a hash-chained JSONL log: ``sha256:`` + the SHA-256 of the
    canonical JSON (compact, ASCII, no NaN) of the entry without its own ``field``. The privacy
    ledger and the audit log chain their entries with it (each entry names the previous hash)."""
    return canonical_sha256({k: v for k, v in entry.items() if k != field})


def read_json(path: str | Path, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file of at most ``max_bytes``; a missing, oversized or malformed file raises
    :class:`DataError` naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DataError(f"{path}: {size} bytes, more than the {max_bytes} a JSON file may have")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from exc


@contextlib.contextmanager
def locked_append(path: str | Path) -> Iterator[Any]:
    """``path`` opened for appending under an exclusive ``flock`` (created with its folder;
    the new directory entry fsync'd): the one way securefed's append-only logs are written."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with open(path, "a+b") as fh:
        if created:
            fsync_dir(path.parent)
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
