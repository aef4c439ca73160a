"""Small file helpers shared by crypto/ and transport/: atomic, never half-written files."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["write_atomic", "write_exclusive", "fsync_dir"]


def fsync_dir(folder: Path) -> None:
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


def write_atomic(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` all at once: temp file (created 0600/``mode``), fsync, rename.
    A reader sees the old file or the new one, never a partial write."""
    path = Path(path)
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
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
