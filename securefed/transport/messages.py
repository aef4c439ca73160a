"""Sealed messages: codec + envelope + counters. The only way data leaves a party.

``seal_message`` encodes named arrays and JSON metadata, reserves the next counter and seals the
result to the recipient; ``open_message`` verifies the envelope against the protocol's pinned
senders, decodes it strictly and checks/advances the replay guard. What leaves the sender is
exactly the envelope: the arrays and metadata encrypted, plus the clear header described in
:mod:`securefed.crypto.envelope` (sender, recipient, protocol hash, stage, counter, length).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from securefed.crypto import (
    MAX_ENVELOPE_BYTES,
    EnvelopeHeader,
    PrivateKeys,
    PublicKeys,
    open_envelope,
    seal_envelope,
)
from securefed.errors import EnvelopeError, OversizeError, ProtocolError
from securefed.fileio import atomic_write_bytes as write_atomic
from securefed.protocol.schema import Protocol
from securefed.transport.codec import decode_arrays, encode_arrays
from securefed.transport.replay import ReplayGuard, SendCounter

__all__ = [
    "OpenedMessage",
    "allowed_senders",
    "open_message",
    "read_message",
    "seal_message",
    "write_message",
]


@dataclass(frozen=True)
class OpenedMessage:
    """A verified, decrypted message."""

    header: EnvelopeHeader
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def sender(self) -> str:
        return self.header.sender

    @property
    def counter(self) -> int:
        return self.header.counter


def allowed_senders(
    protocol: Protocol,
    role: Literal["site", "server"],
    *,
    public_keys: Iterable[PublicKeys] = (),
) -> dict[str, str]:
    """``{party id: Ed25519 fingerprint}`` of the senders of ``role`` that may send to us.

    Fingerprints come from the protocol. Public key bundles (``public_keys``) add parties only
    in a ``simulation`` protocol, and never override or contradict a pinned fingerprint."""
    table: dict[str, str] = {}
    if role == "server":
        if protocol.server.signing_key is not None:
            table[protocol.server.id] = protocol.server.signing_key
    else:
        for site in protocol.sites:
            if site.signing_key is not None:
                table[site.id] = site.signing_key
    for keys in public_keys:
        if keys.role != role:
            raise ProtocolError(
                f"public keys of {keys.party_id!r} are {keys.role} keys, not {role}"
            )
        pinned = table.get(keys.party_id)
        if pinned is not None:
            if pinned != keys.signing_fingerprint:
                raise ProtocolError(
                    f"public keys of {keys.party_id!r} ({keys.signing_fingerprint}) do not match "
                    f"the protocol's signing_key ({pinned}); use the right bundle"
                )
            continue
        if not protocol.is_simulation:
            raise ProtocolError(
                f"{keys.party_id!r} has no signing_key in this deployment protocol; only parties "
                "pinned in the protocol may send"
            )
        table[keys.party_id] = keys.signing_fingerprint
    if not table:
        raise ProtocolError(
            f"no {role} signing keys are pinned in the protocol (or given as public key bundles "
            "in simulation): nobody could send"
        )
    return table


def seal_message(
    arrays: Mapping[str, np.ndarray],
    *,
    sender: PrivateKeys,
    recipient: PublicKeys,
    protocol_hash: str,
    stage: str,
    counters: SendCounter,
    meta: Mapping[str, Any] | None = None,
    max_size: int = MAX_ENVELOPE_BYTES,
) -> bytes:
    """Seal ``arrays`` and ``meta`` for ``recipient``. Leaves the sender: the returned envelope.

    The counter is reserved durably first, so it never repeats (a failed seal wastes one)."""
    payload = encode_arrays(arrays, meta)
    counter = counters.reserve(recipient.party_id, stage)
    return seal_envelope(
        payload,
        sender=sender,
        recipient=recipient,
        protocol_hash=protocol_hash,
        stage=stage,
        counter=counter,
        max_size=max_size,
    )


def open_message(
    data: bytes,
    *,
    recipient: PrivateKeys,
    senders: Mapping[str, str],
    protocol_hash: str,
    stage: str,
    guard: ReplayGuard,
    max_size: int = MAX_ENVELOPE_BYTES,
    advance: bool = True,
) -> OpenedMessage:
    """Verify, decrypt and decode one envelope, then advance the replay guard.

    With ``advance=False`` the caller stores the result first and then calls
    ``guard.advance(msg.sender, stage, msg.counter)`` (no message is lost if it crashes in
    between; it would be accepted once more after a restart). Raises an EnvelopeError subclass
    (or ReplayError) and returns nothing on any failure."""
    header, payload = open_envelope(
        data,
        recipient=recipient,
        senders=senders,
        protocol_hash=protocol_hash,
        stage=stage,
        max_size=max_size,
    )
    guard.check(header.sender, header.stage, header.counter)
    decoded = decode_arrays(payload)
    if advance:
        guard.advance(header.sender, header.stage, header.counter)
    return OpenedMessage(header=header, arrays=decoded.arrays, meta=decoded.meta)


def write_message(path: str | Path, envelope: bytes) -> None:
    """Write an envelope to ``path`` atomically (never a partial file in an outbox)."""
    write_atomic(path, envelope, 0o644)


def read_message(path: str | Path, max_size: int = MAX_ENVELOPE_BYTES) -> bytes:
    """Read an envelope file, refusing one over ``max_size`` before reading it."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_size:
                raise OversizeError(f"{path}: {size} bytes, over the limit of {max_size}")
            data = fh.read(max_size + 1)
    except FileNotFoundError as exc:
        raise EnvelopeError(f"{path}: message file not found") from exc
    except IsADirectoryError as exc:
        raise EnvelopeError(f"{path}: is a folder, not a message file") from exc
    if len(data) > max_size:
        raise OversizeError(f"{path}: grew over the limit of {max_size} bytes while reading")
    return data
