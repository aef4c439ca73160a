"""Files pinned by the protocol (bounds, projections): resolve and verify their SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from securefed.errors import ProtocolError
from securefed.protocol.loader import LoadedProtocol
from securefed.protocol.schema import PinnedFile, Protocol

__all__ = ["check_pinned_files", "file_sha256", "open_pinned", "pinned_files"]


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
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ProtocolError(
            f"{field}.file: cannot read {path!r} ({reason}); it must sit next to the protocol"
        ) from exc
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != pinned.sha256:
        raise ProtocolError(
            f"{field}.sha256: {path} has {actual} but the protocol pins {pinned.sha256}; "
            "the file was changed or is the wrong one"
        )
    return data


def pinned_files(protocol: Protocol) -> list[tuple[str, PinnedFile]]:
    """(field, pinned file) for every file the protocol pins: the release bounds and projection,
    the training's public initial weights."""
    release = protocol.release
    fields = (("release.bounds", release.bounds),
              ("release.projection_file", release.projection_file),
              ("training.initial_weights", protocol.training.initial_weights))  # fmt: skip
    return [(field, pinned) for field, pinned in fields if pinned is not None]


def check_pinned_files(loaded: LoadedProtocol) -> list[str]:
    """Open every file the protocol pins and check its hash (``protocol check`` does, so that a
    missing or changed file is found before a site relies on it); returns the fields checked."""
    checked = []
    for field, pinned in pinned_files(loaded.protocol):
        open_pinned(loaded, pinned, field)
        checked.append(field)
    return checked
