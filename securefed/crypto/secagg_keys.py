"""SecAgg+ public keys signed by the site's pinned Ed25519 key (authenticated key agreement).

Flower's SecAgg+ has every node send two fresh X25519 public keys (pk1: pairwise masks, pk2:
encrypting the secret shares) to the server, which forwards each node's neighbours' keys. Without
authentication the server can answer with keys of its own for made-up neighbours, agree every
pairwise mask with the site and remove them (a Sybil neighbour set). Here each site signs
``(protocol hash, its node id, pk1, pk2)`` with the signing key the protocol pins for it, and a
site accepts a neighbour set only when every neighbour's keys carry a valid signature of a
distinct site of the protocol, checked against the pinned fingerprint.

What leaves a site: its site id, its Ed25519 public key (whose fingerprint the protocol already
publishes) and the signature over two fresh public keys: nothing derived from data.
Tests: ``tests/crypto/test_secagg_keys.py``,
``tests/adversary/test_signed_secagg_keys.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from securefed.crypto.keys import PrivateKeys, fingerprint, verify_ed25519

__all__ = [
    "KeySignatureError",
    "SignedKeys",
    "sign_masking_key",
    "sign_secagg_keys",
    "verify_masking_keys",
    "verify_secagg_keys",
]

_DOMAIN = b"securefed-secaggplus-keys-v1\x00"
_MASKING_DOMAIN = b"securefed-secure-clustering-mask-key-v1\x00"


class KeySignatureError(ValueError):
    """A neighbour's SecAgg+ keys are not signed by a distinct pinned site of the protocol."""


@dataclass(frozen=True)
class SignedKeys:
    """One node's SecAgg+ keys as its site signed them (the keys travel in Flower's record)."""

    site_id: str
    signing_public: bytes  # raw Ed25519 public key of the site
    signature: bytes

    def to_list(self) -> list[bytes]:
        """Flower ConfigRecord form: a list of three bytes values."""
        return [self.site_id.encode("utf-8"), self.signing_public, self.signature]

    @classmethod
    def from_list(cls, value: object) -> SignedKeys:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, bytes) for v in value)
        ):
            raise KeySignatureError("a signed-keys entry that is not three bytes values")
        try:
            site = value[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise KeySignatureError("a signed-keys entry whose site id is not text") from exc
        return cls(site, value[1], value[2])


def _message(protocol_sha256: str, site_id: str, node_id: int, pk1: bytes, pk2: bytes) -> bytes:
    parts = [protocol_sha256.encode("ascii"), site_id.encode("utf-8"), str(int(node_id)).encode(),
             pk1, pk2]  # fmt: skip
    return _DOMAIN + b"\x00".join(hashlib.sha256(p).digest() for p in parts)


def sign_secagg_keys(
    key: PrivateKeys, protocol_sha256: str, node_id: int, pk1: bytes, pk2: bytes
) -> SignedKeys:
    """The site's signature over its fresh SecAgg+ keys for ``node_id`` under the protocol."""
    site = key.party_id
    sig = key.sign(_message(protocol_sha256, site, node_id, pk1, pk2))
    return SignedKeys(site, key.public.signing_public, sig)


def verify_secagg_keys(
    neighbours: Mapping[int, tuple[bytes, bytes]],
    signed: Mapping[int, SignedKeys],
    pinned: Mapping[str, str],
    protocol_sha256: str,
) -> dict[int, str]:
    """The site of each neighbour node, after checking that every neighbour's (pk1, pk2) is
    signed by the key the protocol pins for a site (``pinned``: site id -> signing fingerprint)
    and that no site appears twice. Raises :class:`KeySignatureError` otherwise."""
    out: dict[int, str] = {}
    for nid, (pk1, pk2) in sorted(neighbours.items()):
        entry = signed.get(nid)
        if entry is None:
            raise KeySignatureError(f"node {nid}'s SecAgg+ keys carry no site signature")
        want = pinned.get(entry.site_id)
        if want is None:
            raise KeySignatureError(
                f"node {nid} claims {entry.site_id!r}, not a site pinned by key"
            )
        if fingerprint("ed25519", entry.signing_public) != want:
            raise KeySignatureError(f"node {nid}: not the signing key pinned for {entry.site_id}")
        message = _message(protocol_sha256, entry.site_id, nid, pk1, pk2)
        if not verify_ed25519(entry.signing_public, message, entry.signature):
            raise KeySignatureError(f"node {nid}: a bad signature over its SecAgg+ keys")
        out[nid] = entry.site_id
    if len(set(out.values())) != len(out):
        raise KeySignatureError("one site signed the SecAgg+ keys of two neighbour nodes")
    return out


def _masking_message(protocol_sha256: str, site_id: str, public_key: bytes) -> bytes:
    parts = [protocol_sha256.encode("ascii"), site_id.encode("utf-8"), public_key]
    return _MASKING_DOMAIN + b"\x00".join(hashlib.sha256(p).digest() for p in parts)


def sign_masking_key(key: PrivateKeys, protocol_sha256: str, public_key: bytes) -> SignedKeys:
    """The site's signature over its X25519 masking key of the secure-aggregate clustering
    (securefed.clustering.secure) under the protocol (another domain than SecAgg+'s)."""
    sig = key.sign(_masking_message(protocol_sha256, key.party_id, public_key))
    return SignedKeys(key.party_id, key.public.signing_public, sig)


def verify_masking_keys(
    directory: Mapping[str, tuple[bytes, SignedKeys]],
    pinned: Mapping[str, str],
    protocol_sha256: str,
) -> None:
    """Check a key directory of the secure clustering (site id -> its masking key and the
    signature over it): every key signed by the key the protocol pins for that very site.
    Raises :class:`KeySignatureError` otherwise."""
    for site_id, (public_key, entry) in sorted(directory.items()):
        if entry.site_id != site_id or pinned.get(site_id) is None:
            raise KeySignatureError(f"{site_id!r}: not a site pinned by key, or another's entry")
        if fingerprint("ed25519", entry.signing_public) != pinned[site_id]:
            raise KeySignatureError(f"{site_id}: not the signing key pinned for it")
        message = _masking_message(protocol_sha256, site_id, public_key)
        if not verify_ed25519(entry.signing_public, message, entry.signature):
            raise KeySignatureError(f"{site_id}: a bad signature over its masking key")
