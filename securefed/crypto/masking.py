"""Pairwise-mask secure summation (Bonawitz et al. 2017, without dropout recovery).

Each party holds an X25519 key pair. Two parties agree on a shared secret (X25519), derive a pair
seed with HKDF-SHA256 bound to a context (protocol hash, stage) and expand it, per round, into a
ChaCha20 keystream read as unsigned 64-bit integers. Values are fixed-point encoded into the ring of
integers modulo 2^64; party ``a`` adds the pair mask and party ``b`` subtracts it (``a < b`` by id),
so the masks cancel in the sum of all parties' vectors and only the sum can be decoded.

What leaves a party: its public key and, per round, one masked vector that is uniformly distributed
modulo 2^64 to anyone lacking the pair seeds. The server learns the decoded sum and nothing else.

Limits: every party listed for a round must send; if one drops the sum cannot be unmasked (there is
no secret-shared seed recovery as in SecAgg+) and :func:`unmask_sum` refuses. Values must satisfy
``|sum| < 2^(63 - frac_bits)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefed.errors import AggregationError, CryptoError

__all__ = [
    "DEFAULT_FRAC_BITS",
    "MaskingParty",
    "decode_fixed_point",
    "encode_fixed_point",
    "keystream_u64",
    "unmask_sum",
]

DEFAULT_FRAC_BITS = 24
_INFO = b"securefed/masking/v1"


def encode_fixed_point(values: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """Round ``values * 2^frac_bits`` to integers and map them into Z/2^64 (two's complement)."""
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise AggregationError("masking: cannot encode NaN or infinite values; check the inputs")
    limit = 2.0 ** (62 - frac_bits)
    if arr.size and float(np.max(np.abs(arr))) >= limit:
        raise AggregationError(
            f"masking: a value exceeds the fixed-point range +-{limit:g} "
            f"({frac_bits} fractional bits); rescale the inputs or lower frac_bits"
        )
    return np.rint(arr * 2.0**frac_bits).astype(np.int64).view(np.uint64)


def decode_fixed_point(encoded: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """Inverse of :func:`encode_fixed_point` (reads the ring element as a signed integer)."""
    return np.asarray(encoded, dtype=np.uint64).view(np.int64).astype(np.float64) / 2.0**frac_bits


def keystream_u64(seed: bytes, round_label: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 values: ChaCha20(key=seed, nonce=H(round_label)) over zeros."""
    if len(seed) != 32:
        raise CryptoError("masking: a pair seed must be 32 bytes")
    nonce = hashlib.sha256(b"securefed/masking/nonce" + round_label).digest()[:16]
    enc = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    raw = enc.update(bytes(8 * n)) + enc.finalize()
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


@dataclass
class MaskingParty:
    """One party of a pairwise-masked sum; holds its X25519 private key (never sent)."""

    party_id: str
    _private: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, party_id: str) -> MaskingParty:
        """A party with a fresh X25519 key from the OS CSPRNG."""
        return cls(party_id, X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, party_id: str, raw: bytes) -> MaskingParty:
        """The party of a key kept at the site (``private_bytes``; a site resuming a run)."""
        try:
            return cls(party_id, X25519PrivateKey.from_private_bytes(raw))
        except ValueError as exc:
            raise CryptoError(
                f"masking: the kept key of {party_id!r} is not an X25519 key"
            ) from exc

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key, to keep at the site (mode 0600); never sent."""
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )  # fmt: skip

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key (this is what the party publishes)."""
        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def pair_seed(self, peer_id: str, peer_public: bytes, context: bytes) -> bytes:
        """32-byte seed shared with ``peer_id``: HKDF-SHA256(X25519(own, peer)) bound to both ids
        (in sorted order) and ``context`` (e.g. protocol hash and stage)."""
        if peer_id == self.party_id:
            raise CryptoError(f"masking: party {self.party_id!r} cannot pair with itself")
        try:
            peer = X25519PublicKey.from_public_bytes(peer_public)
            shared = self._private.exchange(peer)
        except ValueError as exc:
            raise CryptoError(
                f"masking: invalid X25519 public key for party {peer_id!r}; "
                "ask that party to publish its key again"
            ) from exc
        low, high = sorted((self.party_id, peer_id))
        info = b"|".join((_INFO, context, low.encode(), high.encode()))
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)

    def mask(
        self,
        values: np.ndarray,
        peers: Mapping[str, bytes],
        *,
        context: bytes,
        round_label: bytes,
        frac_bits: int = DEFAULT_FRAC_BITS,
    ) -> np.ndarray:
        """Fixed-point encode ``values`` (any shape, flattened) and add one pair mask per peer.

        What leaves the party: the returned uint64 vector, uniform modulo 2^64 without the seeds.
        ``round_label`` must be unique per round (masks are never reused).
        """
        flat = encode_fixed_point(np.ravel(values), frac_bits)
        out = flat.copy()
        for peer_id, peer_public in sorted(peers.items()):
            if peer_id == self.party_id:
                continue
            stream = keystream_u64(
                self.pair_seed(peer_id, peer_public, context), round_label, flat.size
            )
            if self.party_id < peer_id:
                out += stream
            else:
                out -= stream
        return out


def unmask_sum(
    masked: Mapping[str, np.ndarray],
    expected: Sequence[str],
    frac_bits: int = DEFAULT_FRAC_BITS,
) -> np.ndarray:
    """Sum the masked vectors of every ``expected`` party modulo 2^64 and decode the total.

    Refuses (AggregationError) if a party is missing, extra or sent a vector of another length: the
    masks only cancel when every party of the round contributes.
    """
    missing = sorted(set(expected) - set(masked))
    extra = sorted(set(masked) - set(expected))
    if missing or extra:
        raise AggregationError(
            f"masking: round needs exactly the parties {sorted(expected)}; missing {missing}, "
            f"unexpected {extra}; rerun the round with the parties that are present"
        )
    lengths = {pid: np.asarray(v).size for pid, v in masked.items()}
    if len(set(lengths.values())) != 1:
        raise AggregationError(f"masking: masked vectors differ in length: {lengths}")
    total = np.zeros(next(iter(lengths.values())), dtype=np.uint64)
    for pid in sorted(masked):
        total += np.asarray(masked[pid], dtype=np.uint64)
    return decode_fixed_point(total, frac_bits)
