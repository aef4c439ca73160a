"""Detached governance signatures over a study protocol's canonical hash (``FILE.sig``).

The signature file is JSON: format, version, the protocol hash, the signer's Ed25519 public key
and fingerprint, and the signature over ``b"securefed-protocol-signature-v1\\0" + hash``. It is
public: it reveals nothing beyond the protocol's hash and the governance public key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from securefed.crypto.keys import PrivateKeys, fingerprint
from securefed.errors import ProtocolSignatureError
from securefed.fileio import atomic_write_bytes as write_atomic
from securefed.protocol import LoadedProtocol, load_protocol

__all__ = [
    "SIGNATURE_FORMAT",
    "add_signature",
    "read_signature",
    "read_signatures",
    "sign_protocol_hash",
    "signature_path",
    "trusted_signers",
    "verify_protocol_file",
    "verify_protocol_hash",
    "write_signature",
]

SIGNATURE_FORMAT = "securefed-protocol-signature"
_VERSION = 1
_DOMAIN = b"securefed-protocol-signature-v1\x00"
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_SIG_FILE = 16 * 1024


def signature_path(protocol_path: str | Path) -> Path:
    """``FILE.sig`` next to ``FILE``."""
    p = Path(protocol_path)
    return p.with_name(p.name + ".sig")


def sign_protocol_hash(protocol_hash: str, keys: PrivateKeys) -> dict[str, Any]:
    """The signature document for ``protocol_hash``, signed with a governance key."""
    if keys.role != "governance":
        raise ProtocolSignatureError(
            f"key {keys.party_id!r} is a {keys.role} key; protocols are signed with a "
            "governance key (`securefed keys new --role governance`)"
        )
    if not _HASH_RE.match(protocol_hash):
        raise ProtocolSignatureError(f"protocol hash {protocol_hash!r} must be sha256:<64 hex>")
    sig = keys.sign(_DOMAIN + protocol_hash.encode("ascii"))
    return {
        "format": SIGNATURE_FORMAT,
        "version": _VERSION,
        "protocol": protocol_hash,
        "signer": keys.party_id,
        "signer_key": base64.b64encode(keys.public.signing_public).decode("ascii"),
        "signer_fingerprint": keys.public.signing_fingerprint,
        "signature": base64.b64encode(sig).decode("ascii"),
    }


def write_signature(doc: dict[str, Any], path: str | Path) -> None:
    """Write a signature document atomically (mode 0644: it is public)."""
    write_atomic(path, json.dumps(doc, indent=2).encode() + b"\n", 0o644)


def read_signature(path: str | Path) -> dict[str, Any]:
    """The one signature document of ``path`` (see :func:`read_signatures` for several)."""
    docs = read_signatures(path)
    if len(docs) != 1:
        raise ProtocolSignatureError(
            f"{path}: holds {len(docs)} signatures; check them with `securefed site verify`"
        )
    return docs[0]


def read_signatures(path: str | Path) -> list[dict[str, Any]]:
    """Every signature document of ``path``: one JSON document, or a JSON list of them (several
    governance signers in one file)."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_SIG_FILE * 16:
            raise ProtocolSignatureError(f"{path}: too large for a signature file")
        data = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ProtocolSignatureError(
            f"{path}: signature file not found; sign with `securefed protocol sign`"
        ) from exc
    except OSError as exc:
        raise ProtocolSignatureError(f"{path}: cannot read ({exc.strerror})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolSignatureError(f"{path}: not a signature file (invalid JSON)") from exc
    docs = data if isinstance(data, list) else [data]
    if not docs or len(docs) > 64:
        raise ProtocolSignatureError(f"{path}: expected 1 to 64 signatures, found {len(docs)}")
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
            raise ProtocolSignatureError(
                f"{path}: entry {i + 1} is not a securefed protocol signature"
            )
        if doc.get("version") != _VERSION:
            raise ProtocolSignatureError(
                f"{path}: entry {i + 1}: unsupported signature version {doc.get('version')!r}"
            )
    return docs


def add_signature(doc: dict[str, Any], path: str | Path) -> int:
    """Add ``doc`` to the signatures at ``path`` (created when missing); another signer's
    signature of the same protocol is kept, one of another protocol or by the same signer is
    replaced. Returns the number of signatures now in the file."""
    path = Path(path)
    kept = []
    if path.exists():
        kept = [
            d for d in read_signatures(path)
            if d.get("protocol") == doc["protocol"]
            and d.get("signer_fingerprint") != doc["signer_fingerprint"]
        ]  # fmt: skip
    docs = [*kept, doc]
    body = docs[0] if len(docs) == 1 else docs
    write_atomic(path, json.dumps(body, indent=2).encode() + b"\n", 0o644)
    return len(docs)


def _check_one(doc: dict[str, Any], protocol_hash: str, source: str) -> str:
    """Verify one signature document over ``protocol_hash``; returns its key's fingerprint."""
    if doc.get("protocol") != protocol_hash:
        raise ProtocolSignatureError(
            f"{source}: signs protocol {doc.get('protocol')}, but this protocol is {protocol_hash}"
            " (the protocol was changed after signing, or this is another protocol's signature)"
        )
    try:
        raw = base64.b64decode(str(doc.get("signer_key", "")), validate=True)
        sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except binascii.Error as exc:
        raise ProtocolSignatureError(f"{source}: corrupt signer_key or signature field") from exc
    if len(raw) != 32:
        raise ProtocolSignatureError(f"{source}: signer_key must be an Ed25519 public key")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(
            sig, _DOMAIN + protocol_hash.encode("ascii")
        )
    except (InvalidSignature, ValueError) as exc:
        raise ProtocolSignatureError(f"{source}: the signature does not verify (tampered)") from exc
    return fingerprint("ed25519", raw)


def trusted_signers(
    docs: list[dict[str, Any]], protocol_hash: str, trusted: frozenset[str], source: str = "sig"
) -> tuple[str, ...]:
    """The distinct TRUSTED governance keys (fingerprints in ``trusted``, the site's own list)
    whose signature over ``protocol_hash`` verifies. A signature by an untrusted key counts for
    nothing; any signature that fails to verify, or signs another protocol, is refused."""
    signers: list[str] = []
    for i, doc in enumerate(docs):
        fp = _check_one(doc, protocol_hash, f"{source} (signature {i + 1})")
        if fp in trusted and fp not in signers:
            signers.append(fp)
    return tuple(signers)


def verify_protocol_hash(
    doc: dict[str, Any], protocol_hash: str, expected_fingerprint: str | None, source: str = "sig"
) -> str:
    """Check ``doc`` signs ``protocol_hash`` with the key ``expected_fingerprint`` (the
    protocol's governance.signing_key). Returns the signer's fingerprint."""
    if expected_fingerprint is None:
        raise ProtocolSignatureError(
            "governance.signing_key is not set in the protocol, so no signature can be checked; "
            "add the fingerprint printed by `securefed keys new --role governance`"
        )
    actual = _check_one(doc, protocol_hash, source)
    if actual != expected_fingerprint:
        raise ProtocolSignatureError(
            f"{source}: signed by key {actual}, but governance.signing_key is "
            f"{expected_fingerprint}; sign with the governance key the protocol names"
        )
    return actual


def verify_protocol_file(path: str | Path, sig: str | Path | None = None) -> LoadedProtocol:
    """Load the protocol at ``path`` and check its detached signature (``FILE.sig`` by default)
    against its own governance.signing_key. Sites call this before doing anything."""
    loaded = load_protocol(path)
    sig_path = Path(sig) if sig is not None else signature_path(path)
    verify_protocol_hash(
        read_signature(sig_path),
        loaded.sha256,
        loaded.protocol.governance.signing_key,
        str(sig_path),
    )
    return loaded
