"""Files pinned by the protocol (bounds, projections): resolve and verify their SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from securefed.errors import ProtocolError
from securefed.protocol.loader import LoadedProtocol
from securefed.protocol.schema import PinnedFile

__all__ = ["file_sha256", "open_pinned"]


def file_sha256(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def open_pinned(loaded: LoadedProtocol, pinned: PinnedFile, field: str) -> bytes:
    """Bytes of a pinned file after checking its hash against the protocol."""
    path = loaded.resolve(pinned.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProtocolError(
            f"{field}.file: cannot read {path} ({exc.strerror}); it must sit next to the protocol"
        ) from exc
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != pinned.sha256:
        raise ProtocolError(
            f"{field}.sha256: {path} has {actual} but the protocol pins {pinned.sha256}; "
            "the file was changed or is the wrong one"
        )
    return data
