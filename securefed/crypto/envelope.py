"""Sealed envelopes: HPKE (RFC 9180) encryption to the recipient, Ed25519 signature by the sender.

Wire format (version 1), all integers little-endian::

    b"SFEV" | version u16 | header_len u32 | header (canonical JSON) |
    body_len u64 | body (HPKE enc || ciphertext || tag) | signature (64 bytes, Ed25519)

The header names the format version, the HPKE suite, the protocol hash, sender and recipient ids,
the sender's public signing key, the recipient's encryption-key fingerprint, the stage, the counter
and the payload length. The HPKE ``info`` is a hash of the header, so the ciphertext only opens
under the exact header; the signature covers everything before it (header and ciphertext).

What an observer of an envelope learns: the header fields above (who sends to whom, for which
protocol and stage, the counter) and the payload length. The payload is confidential.

Opening checks, in order, with nothing returned on any failure: size (before parsing), magic,
version, lengths (truncation), header syntax, sender allowed and its key pinned, signature,
protocol, recipient, stage, decryption, payload length. Replay is checked by the caller
(``securefed.transport``) with the counter returned here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519

from securefed.crypto.keys import PrivateKeys, PublicKeys, fingerprint
from securefed.errors import (
    EnvelopeError,
    OversizeError,
    TamperError,
    TruncatedError,
    UnknownSenderError,
    VersionError,
    WrongKeyError,
    WrongProtocolError,
    WrongStageError,
)
from securefed.fileio import canonical_json

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_ENVELOPE_BYTES",
    "MAX_HEADER_BYTES",
    "EnvelopeHeader",
    "TruncatedError",
    "WrongKeyError",
    "open_envelope",
    "seal_envelope",
]

ENVELOPE_VERSION = 1
MAGIC = b"SFEV"
MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
_SIG_LEN = 64
_PREFIX = struct.Struct("<4sHI")  # magic, version, header_len
_BODY_LEN = struct.Struct("<Q")
_SIGN_DOMAIN = b"securefed-envelope-v1\x00"
_INFO_DOMAIN = b"securefed-envelope-v1-info\x00"
_STAGE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_SUITES = {
    "x25519": ("DHKEM(X25519, HKDF-SHA256)", hpke.KEM.X25519),
    "mlkem768-x25519": ("MLKEM768-X25519", hpke.KEM.MLKEM768_X25519),
}
_KDF_NAME, _AEAD_NAME = "HKDF-SHA256", "AES-256-GCM"
_HEADER_KEYS = {
    "v",
    "kem",
    "kdf",
    "aead",
    "protocol",
    "sender",
    "sender_key",
    "recipient",
    "recipient_key",
    "stage",
    "counter",
    "payload_len",
}


@dataclass(frozen=True)
class EnvelopeHeader:
    """The authenticated, unencrypted header of an opened envelope."""

    protocol: str
    sender: str
    sender_fingerprint: str
    recipient: str
    recipient_fingerprint: str
    stage: str
    counter: int
    payload_len: int
    kem: str


def _suite(kem: str) -> hpke.Suite:
    return hpke.Suite(_SUITES[kem][1], hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _canonical(header: Mapping[str, Any]) -> bytes:
    return canonical_json(header)  # sorted keys, compact, ASCII: the bytes the signature binds


def _info(header_bytes: bytes) -> bytes:
    return _INFO_DOMAIN + hashlib.sha256(header_bytes).digest()


def seal_envelope(
    payload: bytes,
    *,
    sender: PrivateKeys,
    recipient: PublicKeys,
    protocol_hash: str,
    stage: str,
    counter: int,
    max_size: int = MAX_ENVELOPE_BYTES,
) -> bytes:
    """Encrypt ``payload`` to ``recipient`` and sign it with ``sender``'s key.

    Leaves the sender: the returned bytes (header in clear, payload encrypted). Raises
    OversizeError if the envelope would exceed ``max_size`` (the recipient would refuse it)."""
    if not _HASH_RE.match(protocol_hash):
        raise EnvelopeError(f"protocol hash {protocol_hash!r} must be sha256:<64 hex>")
    if not _STAGE_RE.match(stage):
        raise EnvelopeError(f"stage {stage!r} must be lowercase letters, digits, '_', '.', '-'")
    if not isinstance(counter, int) or not 0 < counter < 2**63:
        raise EnvelopeError(f"counter {counter!r} must be a positive 63-bit integer")
    header = {
        "v": ENVELOPE_VERSION,
        "kem": recipient.kem,
        "kdf": _KDF_NAME,
        "aead": _AEAD_NAME,
        "protocol": protocol_hash,
        "sender": sender.party_id,
        "sender_key": base64.b64encode(sender.public.signing_public).decode("ascii"),
        "recipient": recipient.party_id,
        "recipient_key": recipient.encryption_fingerprint,
        "stage": stage,
        "counter": counter,
        "payload_len": len(payload),
    }
    header_bytes = _canonical(header)
    body = _suite(recipient.kem).encrypt(payload, recipient.hpke_public(), info=_info(header_bytes))
    total = _PREFIX.size + len(header_bytes) + _BODY_LEN.size + len(body) + _SIG_LEN
    if total > max_size:
        raise OversizeError(
            f"envelope for {recipient.party_id} stage {stage} would be {total} bytes, over the "
            f"limit of {max_size}; send less data per message"
        )
    signed = (
        _PREFIX.pack(MAGIC, ENVELOPE_VERSION, len(header_bytes))
        + header_bytes
        + _BODY_LEN.pack(len(body))
        + body
    )
    return signed + sender.sign(_SIGN_DOMAIN + signed)


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TamperError("envelope header is not valid JSON (corrupted or tampered)") from exc
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise TamperError("envelope header has missing or unknown fields (tampered)")
    if _canonical(header) != raw:
        raise TamperError("envelope header is not in canonical form (tampered)")
    if header["v"] != ENVELOPE_VERSION:
        raise VersionError(f"envelope header version {header['v']!r} is not supported")
    checks = {
        "kem": lambda v: v in _SUITES,
        "kdf": lambda v: v == _KDF_NAME,
        "aead": lambda v: v == _AEAD_NAME,
        "protocol": lambda v: isinstance(v, str) and bool(_HASH_RE.match(v)),
        "sender": lambda v: isinstance(v, str) and bool(_ID_RE.match(v)),
        "sender_key": lambda v: isinstance(v, str) and len(v) == 44,
        "recipient": lambda v: isinstance(v, str) and bool(_ID_RE.match(v)),
        "recipient_key": lambda v: isinstance(v, str) and bool(_HASH_RE.match(v)),
        "stage": lambda v: isinstance(v, str) and bool(_STAGE_RE.match(v)),
        "counter": lambda v: type(v) is int and 0 < v < 2**63,
        "payload_len": lambda v: type(v) is int and v >= 0,
    }
    for name, ok in checks.items():
        if not ok(header[name]):
            raise TamperError(f"envelope header field {name} has an invalid value (tampered)")
    return header


def _frame(data: bytes, max_size: int) -> tuple[bytes, int, int]:
    """Check the envelope's framing; returns (header bytes, body start, body length)."""
    if len(data) > max_size:
        raise OversizeError(f"envelope is {len(data)} bytes, over the limit of {max_size}")
    if len(data) < _PREFIX.size:
        raise TruncatedError("envelope is truncated (shorter than its fixed prefix)")
    magic, version, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise TamperError("not a securefed envelope (bad magic bytes)")
    if version != ENVELOPE_VERSION:
        raise VersionError(
            f"envelope format version {version} is not supported (this securefed reads version "
            f"{ENVELOPE_VERSION}); upgrade the older side"
        )
    if header_len > MAX_HEADER_BYTES:
        raise TamperError(f"envelope header length {header_len} is over {MAX_HEADER_BYTES}")
    pos = _PREFIX.size + header_len
    if len(data) < pos + _BODY_LEN.size + _SIG_LEN:
        raise TruncatedError("envelope is truncated (header or body length cut off)")
    (body_len,) = _BODY_LEN.unpack_from(data, pos)
    body_start = pos + _BODY_LEN.size
    expected = body_start + body_len + _SIG_LEN
    if expected != len(data):
        raise TruncatedError(
            f"envelope is {len(data)} bytes but its length fields say {expected} "
            "(truncated or extended)"
        )
    return bytes(data[_PREFIX.size : pos]), body_start, body_len


def _verify_sender(data: bytes, header: dict[str, Any], senders: Mapping[str, str]) -> str:
    """The sender's key must be the one the protocol pins and must sign the whole envelope;
    returns the pinned fingerprint."""
    sender_id = header["sender"]
    pinned = senders.get(sender_id)
    if pinned is None:
        raise UnknownSenderError(
            f"envelope from {sender_id!r}, who is not an allowed sender in this protocol"
        )
    try:
        sender_raw = base64.b64decode(header["sender_key"], validate=True)
    except binascii.Error as exc:
        raise TamperError("envelope sender_key is not valid base64 (tampered)") from exc
    if len(sender_raw) != 32 or fingerprint("ed25519", sender_raw) != pinned:
        raise UnknownSenderError(
            f"envelope from {sender_id!r} is signed with a key whose fingerprint is not the one "
            "the protocol pins for that sender"
        )
    signed = memoryview(data)[: len(data) - _SIG_LEN]
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(sender_raw).verify(
            bytes(data[len(data) - _SIG_LEN :]), _SIGN_DOMAIN + bytes(signed)
        )
    except (InvalidSignature, ValueError) as exc:
        raise TamperError(
            f"envelope from {sender_id!r}: signature does not verify (modified in transit)"
        ) from exc
    return pinned


def _check_binding(
    header: dict[str, Any], recipient: PrivateKeys, protocol_hash: str, stage: str
) -> None:
    """The (signed) header must bind this protocol, this recipient's key and this stage."""
    sender_id = header["sender"]
    if header["protocol"] != protocol_hash:
        raise WrongProtocolError(
            f"envelope from {sender_id!r} is for protocol {header['protocol']}, not "
            f"{protocol_hash}; both sides must use the same signed protocol"
        )
    if (
        header["recipient"] != recipient.party_id
        or header["recipient_key"] != recipient.public.encryption_fingerprint
        or header["kem"] != recipient.public.kem
    ):
        raise WrongKeyError(
            f"envelope from {sender_id!r} is sealed for {header['recipient']!r} "
            f"({header['recipient_key']}), not for this key ({recipient.party_id}, "
            f"{recipient.public.encryption_fingerprint})"
        )
    if header["stage"] != stage:
        raise WrongStageError(
            f"envelope from {sender_id!r} is for stage {header['stage']!r}, expected {stage!r}"
        )


def open_envelope(
    data: bytes,
    *,
    recipient: PrivateKeys,
    senders: Mapping[str, str],
    protocol_hash: str,
    stage: str,
    max_size: int = MAX_ENVELOPE_BYTES,
) -> tuple[EnvelopeHeader, bytes]:
    """Verify and decrypt an envelope; return its header and payload.

    ``senders`` maps each allowed sender id to its pinned Ed25519 fingerprint (from the
    protocol). Raises OversizeError, TamperError (incl. TruncatedError), VersionError,
    UnknownSenderError, WrongProtocolError, WrongKeyError or WrongStageError; returns nothing on
    failure. The caller must still check the counter for replay."""
    header_bytes, body_start, body_len = _frame(data, max_size)
    header = _parse_header(header_bytes)
    pinned = _verify_sender(data, header, senders)
    _check_binding(header, recipient, protocol_hash, stage)
    sender_id = header["sender"]
    try:
        payload = _suite(header["kem"]).decrypt(
            bytes(data[body_start : body_start + body_len]),
            recipient.hpke_private(),
            info=_info(header_bytes),
        )
    except (InvalidTag, ValueError) as exc:
        raise TamperError(
            f"envelope from {sender_id!r}: decryption failed (wrong key or modified ciphertext)"
        ) from exc
    if len(payload) != header["payload_len"]:
        raise TamperError(f"envelope from {sender_id!r}: payload length mismatch")
    return (
        EnvelopeHeader(
            protocol=header["protocol"],
            sender=sender_id,
            sender_fingerprint=pinned,
            recipient=header["recipient"],
            recipient_fingerprint=header["recipient_key"],
            stage=header["stage"],
            counter=header["counter"],
            payload_len=header["payload_len"],
            kem=header["kem"],
        ),
        payload,
    )
