"""Fixed-point BFV (TenSEAL) for homomorphic aggregation of model weights: additions only.

Roles and keys:

- **Key holders: the sites.** They share one :class:`BfvKey` (a TenSEAL secret context, a
  32-byte MAC key and a random key id). One site (the protocol's first training site) makes it
  and seals it to every other site (HPKE, signed: :func:`seal_key` / :func:`open_key`); the
  aggregator relays the envelopes and cannot open them.
- **Aggregator: the server.** It gets :meth:`BfvKey.aggregator_bytes`: the encryption
  parameters only, *no secret key and no public key*, so it can parse and add ciphertexts but can
  neither decrypt nor encrypt (``tests/crypto/test_bfv.py``).

What a site sends per round (:func:`encrypt_contribution`): its model, clipped to ``[-C, C]``,
quantised to ``precision_bits`` (default 20: the average's error is at most half a step,
``C / (2**20 - 1)``, under 1e-6 of the clipping range), multiplied by its integer FedAvg
weight, packed two values per BFV slot (30-bit fields) when the phase's weight sum cannot
overflow them, else one; plus a header ciphertext with the weight and two MAC tags. An observer
learns the vector length, the packing and the key id (random, public), nothing of the values
(BFV is IND-CPA under RLWE).

Integrity against the aggregator: BFV is malleable, and an aggregator can add ciphertexts, scale
them by integers and mask them slot by slot. The key holder that decrypts (one per phase, chosen
by the protocol) checks a linearly homomorphic MAC, ``T = sum_l s_l v_l + s_w w + sum_{i in S}
r_i (mod t)`` with ``s`` and ``r`` drawn from the MAC key, the phase and the round
(SHAKE-256): a sum of exactly the contributions of the declared sites ``S`` of this round
verifies; anything else an aggregator without the key can compute (one site's ciphertext, a
duplicate, a slot-masked mix, a replay from another round) verifies with probability at most
about 2^-118 (two tags, Schwartz-Zippel over Z_t). Tests: ``tests/crypto/test_bfv.py``.

Parameters: N = 4096, coefficient moduli [40, 40, 29] (109 bits, the largest modulus the HE
standard allows for 128-bit security at N = 4096; fresh ciphertexts live at the 80-bit data
level), plaintext modulus t = 2^60 - 16383 (a prime = 1 mod 2N, so every slot holds a value mod
t). Sums of up to 1024 ciphertexts decrypt exactly (tested). Measured size: 2.88x fp32 with two
values per slot (benchmarks/results/he.md).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from securefed.crypto.envelope import open_envelope, seal_envelope
from securefed.crypto.keys import PrivateKeys, PublicKeys
from securefed.errors import CryptoError

__all__ = [
    "BFV_COEFF_BITS",
    "BFV_N",
    "BFV_T",
    "KEY_STAGE",
    "AggregatorContext",
    "BfvKey",
    "DecodedAggregate",
    "Encoding",
    "contribution_bytes",
    "decrypt_aggregate",
    "encoding_for",
    "encrypt_contribution",
    "load_aggregator_context",
    "load_key",
    "make_key",
    "open_key",
    "seal_key",
    "sum_contributions",
]

BFV_N = 4096
BFV_COEFF_BITS = (40, 40, 29)
BFV_T = 1152921504606830593  # 2^60 - 16383, prime, = 1 mod 8192 (tests/crypto/test_bfv.py)
FIELD_BITS = 30
KEY_STAGE = "he-key"
_KEY_MAGIC, _CTX_MAGIC, _VEC_MAGIC = b"SFBK", b"SFBA", b"SFBV"
_VERSION = 1
_KEY_HEAD = struct.Struct("<4sH16s32sQ")  # magic, version, key id, mac key, context length
_CTX_HEAD = struct.Struct("<4sH16sQ")  # magic, version, key id, context length
_VEC_HEAD = struct.Struct("<4sH16sBBQI")  # magic, version, key id, bits, fields, length, n_ct
_LEN = struct.Struct("<Q")
_MAX_CT_BYTES = 1 << 20
_TAGS = 2


def _context_from(data: bytes, what: str) -> ts.Context:
    try:
        return ts.context_from(data)
    except (ValueError, RuntimeError) as exc:
        raise CryptoError(f"{what}: the BFV context does not parse") from exc


class AggregatorContext:
    """The aggregator's context: parses and adds ciphertexts; holds neither the secret key nor
    the public key (it can neither decrypt nor encrypt)."""

    def __init__(self, ctx: ts.Context, key_id: bytes) -> None:
        if ctx.has_secret_key() or ctx.has_public_key():
            raise CryptoError("an aggregator's BFV context must hold no secret and no public key")
        self._ctx = ctx
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"AggregatorContext(key id {self.key_id.hex()}, no keys)"


@dataclass(frozen=True)
class Encoding:
    """How a site's weights become BFV slots: ``precision_bits`` per value in ``[-clip, clip]``,
    ``fields`` values per slot (2: 30-bit fields; 1: one value per slot)."""

    clip: float
    precision_bits: int = 20
    fields: int = 2

    def __post_init__(self) -> None:
        if not 8 <= self.precision_bits <= 28:
            raise CryptoError(f"precision_bits {self.precision_bits} must be within 8..28")
        if self.fields not in (1, 2):
            raise CryptoError(f"fields per slot must be 1 or 2, got {self.fields}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise CryptoError(f"clipping range {self.clip} must be a positive number")

    @property
    def levels(self) -> int:
        return (1 << self.precision_bits) - 1

    @property
    def max_weight_sum(self) -> int:
        """The largest sum of FedAvg weights whose packed fields cannot overflow."""
        cap = (1 << FIELD_BITS) - 2 if self.fields == 2 else BFV_T - 1
        return cap // self.levels

    def slots_for(self, length: int) -> int:
        return math.ceil(length / self.fields)

    def ciphertexts_for(self, length: int) -> int:
        """Data ciphertexts plus the header ciphertext."""
        return math.ceil(self.slots_for(length) / BFV_N) + 1


def encoding_for(clip: float, max_weight_sum: int, precision_bits: int = 20) -> Encoding:
    """Two values per slot when ``max_weight_sum`` fits the 30-bit fields, else one."""
    two = Encoding(clip, precision_bits, 2)
    if max_weight_sum <= two.max_weight_sum:
        return two
    one = Encoding(clip, precision_bits, 1)
    if max_weight_sum > one.max_weight_sum:
        raise CryptoError(f"a weight sum of {max_weight_sum} overflows BFV slots")
    return one


class BfvKey:
    """The key holders' key: TenSEAL secret context, MAC key and random key id."""

    def __init__(self, ctx: ts.Context, mac_key: bytes, key_id: bytes) -> None:
        if not ctx.has_secret_key():
            raise CryptoError("a BFV key needs the secret key")
        if len(mac_key) != 32 or len(key_id) != 16:
            raise CryptoError("a BFV key needs a 32-byte MAC key and a 16-byte key id")
        self._ctx = ctx
        self._mac_key = mac_key
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"BfvKey(key id {self.key_id.hex()}, <secret>)"

    def to_bytes(self) -> bytes:
        """The secret key file's content: store it like a private key (0600, never sent but
        sealed to another key holder)."""
        data = self._ctx.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False,
            save_relin_keys=False,
        )  # fmt: skip
        return _KEY_HEAD.pack(_KEY_MAGIC, _VERSION, self.key_id, self._mac_key, len(data)) + data

    def aggregator_bytes(self) -> bytes:
        """What the aggregator gets: the parameters only (no secret key, no public key)."""
        data = self._ctx.serialize(
            save_public_key=False, save_secret_key=False, save_galois_keys=False,
            save_relin_keys=False,
        )  # fmt: skip
        return _CTX_HEAD.pack(_CTX_MAGIC, _VERSION, self.key_id, len(data)) + data

    def _prf(self, label: str, n: int) -> np.ndarray:
        """``n`` values mod t from SHAKE-256 keyed with the MAC key (bias < 2^-60 per value)."""
        tag = hmac.new(self._mac_key, label.encode(), hashlib.sha256).digest()
        raw = hashlib.shake_256(tag).digest(8 * n)
        return np.frombuffer(raw, dtype="<u8").astype(object) % BFV_T

    def _tags(self, scope: str, slots: np.ndarray, weight: int, site: int) -> list[int]:
        """One site's tags: the expected tags of a sum of that site alone."""
        return self._expected_tags(scope, slots, weight, [site])

    def _expected_tags(
        self, scope: str, slots: np.ndarray, weight: int, sites: Sequence[int]
    ) -> list[int]:
        """``sum_l s_l v_l + s_w w + sum_{i in sites} r_i (mod t)`` for each tag."""
        out = []
        for k in range(_TAGS):
            s = self._prf(f"s/{k}/{scope}", slots.size + 1)
            r = sum(int(self._prf(f"r/{k}/{scope}/{i}", 1)[0]) for i in sites)
            acc = int(np.dot(s[:-1], slots.astype(object))) if slots.size else 0
            out.append((acc + int(s[-1]) * weight + r) % BFV_T)
        return out


def make_key() -> BfvKey:
    """A fresh key (OS CSPRNG for the MAC key and id; SEAL's own for the secret key)."""
    ctx = ts.context(
        ts.SCHEME_TYPE.BFV,
        poly_modulus_degree=BFV_N,
        plain_modulus=BFV_T,
        coeff_mod_bit_sizes=list(BFV_COEFF_BITS),
    )
    return BfvKey(ctx, secrets.token_bytes(32), secrets.token_bytes(16))


def load_key(data: bytes, source: str = "BFV key") -> BfvKey:
    """A key holder's key from :meth:`BfvKey.to_bytes`."""
    if len(data) < _KEY_HEAD.size:
        raise CryptoError(f"{source} is truncated")
    magic, version, key_id, mac_key, n = _KEY_HEAD.unpack_from(data, 0)
    if magic != _KEY_MAGIC or version != _VERSION or len(data) != _KEY_HEAD.size + n:
        raise CryptoError(f"{source} is not a securefed BFV key (bad magic, version or length)")
    ctx = _context_from(data[_KEY_HEAD.size :], source)
    return BfvKey(ctx, mac_key, key_id)


def load_aggregator_context(data: bytes, source: str = "aggregator context") -> AggregatorContext:
    """The aggregator's context from :meth:`BfvKey.aggregator_bytes`; refuses one with keys."""
    if len(data) < _CTX_HEAD.size:
        raise CryptoError(f"{source} is truncated")
    magic, version, key_id, n = _CTX_HEAD.unpack_from(data, 0)
    if magic != _CTX_MAGIC or version != _VERSION or len(data) != _CTX_HEAD.size + n:
        raise CryptoError(f"{source} is not a securefed BFV aggregator context")
    return AggregatorContext(_context_from(data[_CTX_HEAD.size :], source), key_id)


def seal_key(
    key: BfvKey, *, dealer: PrivateKeys, recipient: PublicKeys, protocol_hash: str
) -> bytes:
    """The key, sealed to one other key holder (HPKE) and signed by the dealing site."""
    return seal_envelope(
        key.to_bytes(), sender=dealer, recipient=recipient, protocol_hash=protocol_hash,
        stage=KEY_STAGE, counter=1, max_size=1 << 24,
    )  # fmt: skip


def open_key(
    envelope: bytes, *, recipient: PrivateKeys, dealer: tuple[str, str], protocol_hash: str
) -> BfvKey:
    """Open a dealt key: only from ``dealer`` = (site id, pinned signing fingerprint)."""
    _, payload = open_envelope(
        envelope, recipient=recipient, senders=dict([dealer]), protocol_hash=protocol_hash,
        stage=KEY_STAGE, max_size=1 << 24,
    )  # fmt: skip
    return load_key(payload, f"BFV key dealt by {dealer[0]}")


# -- encoding ---------------------------------------------------------------------------------
def _quantise(values: np.ndarray, enc: Encoding) -> np.ndarray:
    clipped = np.clip(values, -enc.clip, enc.clip)
    return np.rint((clipped + enc.clip) * (enc.levels / (2.0 * enc.clip))).astype(np.int64)


def _pack(q: np.ndarray, enc: Encoding) -> np.ndarray:
    """Weighted quantised values -> slot values (< t), padded to whole ciphertexts."""
    n_slots = enc.slots_for(q.size)
    padded = np.zeros(n_slots * enc.fields, dtype=np.int64)
    padded[: q.size] = q
    if enc.fields == 2:
        pairs = padded.reshape(-1, 2)
        slots = pairs[:, 0] + (pairs[:, 1] << FIELD_BITS)
    else:
        slots = padded
    full = np.zeros(math.ceil(n_slots / BFV_N) * BFV_N, dtype=np.int64)
    full[:n_slots] = slots
    return full


def _unpack(slots: np.ndarray, enc: Encoding, length: int) -> np.ndarray:
    n_slots = enc.slots_for(length)
    used = slots[:n_slots]
    if enc.fields == 2:
        mask = (1 << FIELD_BITS) - 1
        fields = np.stack([used & mask, used >> FIELD_BITS], axis=1).reshape(-1)
    else:
        fields = used
    return fields[:length]


def _scope(protocol_hash: str, phase: str, rnd: int) -> str:
    return f"{protocol_hash}/{phase}/{rnd}"


def encrypt_contribution(
    key: BfvKey,
    values: np.ndarray,
    *,
    weight: int,
    site: int,
    enc: Encoding,
    protocol_hash: str,
    phase: str,
    rnd: int,
) -> bytes:
    """One site's contribution to one round: ``weight * quantise(values)``, encrypted, with
    the weight and the MAC tags in a header ciphertext.

    Leaves the site: the returned bytes (ciphertexts; length, packing and key id in clear)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        raise CryptoError("nothing to encrypt")
    if not np.all(np.isfinite(flat)):
        raise CryptoError("cannot encrypt NaN or infinite weights")
    if not 1 <= int(weight) <= enc.max_weight_sum:
        raise CryptoError(f"FedAvg weight {weight} outside 1..{enc.max_weight_sum}")
    slots = _pack(_quantise(flat, enc) * int(weight), enc)
    tags = key._tags(_scope(protocol_hash, phase, rnd), slots, int(weight), site)
    head = np.zeros(BFV_N, dtype=object)
    head[0], head[1 : 1 + _TAGS] = int(weight), tags
    cts = [ts.bfv_vector(key._ctx, [int(v) for v in head])]
    cts += [ts.bfv_vector(key._ctx, slots[i : i + BFV_N].tolist())
            for i in range(0, slots.size, BFV_N)]  # fmt: skip
    return _serialize(key.key_id, enc, flat.size, [c.serialize() for c in cts])


def _serialize(key_id: bytes, enc: Encoding, length: int, blobs: list[bytes]) -> bytes:
    parts = [_VEC_HEAD.pack(_VEC_MAGIC, _VERSION, key_id, enc.precision_bits, enc.fields,
                            length, len(blobs))]  # fmt: skip
    for blob in blobs:
        parts += [_LEN.pack(len(blob)), blob]
    return b"".join(parts)


@dataclass
class _Parsed:
    key_id: bytes
    precision_bits: int
    fields: int
    length: int
    cts: list[ts.BFVVector]


def _parse(data: bytes, ctx: ts.Context, what: str) -> _Parsed:
    view = memoryview(data)
    if len(view) < _VEC_HEAD.size:
        raise CryptoError(f"{what} is truncated")
    magic, version, key_id, bits, fields, length, n_ct = _VEC_HEAD.unpack_from(view, 0)
    if magic != _VEC_MAGIC or version != _VERSION:
        raise CryptoError(f"{what} is not a securefed BFV contribution")
    if fields not in (1, 2) or not 8 <= bits <= 28 or length < 1:
        raise CryptoError(f"{what}: invalid encoding fields")
    if n_ct != math.ceil(math.ceil(length / fields) / BFV_N) + 1:
        raise CryptoError(f"{what}: {n_ct} ciphertexts do not fit {length} values")
    pos, cts = _VEC_HEAD.size, []
    for i in range(n_ct):
        if pos + _LEN.size > len(view):
            raise CryptoError(f"{what} is truncated at ciphertext {i}")
        (size,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        if size > _MAX_CT_BYTES or pos + size > len(view):
            raise CryptoError(f"{what}: ciphertext {i} has an invalid length")
        try:
            cts.append(ts.bfv_vector_from(ctx, bytes(view[pos : pos + size])))
        except (ValueError, RuntimeError) as exc:
            raise CryptoError(f"{what}: ciphertext {i} is not a BFV ciphertext") from exc
        pos += size
    if pos != len(view):
        raise CryptoError(f"{what} has trailing bytes")
    return _Parsed(key_id, bits, fields, length, cts)


def contribution_bytes(length: int, enc: Encoding) -> int:
    """Estimated size of one contribution of ``length`` values (measured per ciphertext)."""
    return _VEC_HEAD.size + enc.ciphertexts_for(length) * (_LEN.size + _CT_BYTES)


_CT_BYTES = 94_400  # serialized BFV ciphertext at these parameters (measured, SEAL zstd)


def sum_contributions(ctx: AggregatorContext, contributions: Iterable[bytes]) -> bytes:
    """The aggregator's step: the ciphertext sum of the contributions (all of one round, same
    encoding and key). It learns nothing of the values."""
    acc: _Parsed | None = None
    for i, data in enumerate(contributions):
        part = _parse(data, ctx._ctx, f"contribution {i}")
        if part.key_id != ctx.key_id:
            raise CryptoError(f"contribution {i} was encrypted under another key")
        if acc is None:
            acc = part
            continue
        if (part.length, part.fields, part.precision_bits) != (
            acc.length, acc.fields, acc.precision_bits,
        ):  # fmt: skip
            raise CryptoError(f"contribution {i} has another length or encoding")
        for mine, theirs in zip(acc.cts, part.cts, strict=True):
            mine += theirs
    if acc is None:
        raise CryptoError("nothing to sum")
    enc = Encoding(1.0, acc.precision_bits, acc.fields)
    return _serialize(acc.key_id, enc, acc.length, [c.serialize() for c in acc.cts])


@dataclass(frozen=True)
class DecodedAggregate:
    """The weighted average the key holder releases, and the weight sum it was checked with."""

    mean: np.ndarray
    weight_sum: int


def decrypt_aggregate(
    key: BfvKey,
    data: bytes,
    *,
    sites: Sequence[int],
    enc: Encoding,
    protocol_hash: str,
    phase: str,
    rnd: int,
) -> DecodedAggregate:
    """The key holder's step: decrypt the sum the aggregator claims is of ``sites``' round
    ``rnd`` contributions, verify its MAC, and decode the weighted average.

    Refuses (CryptoError, nothing decoded) a sum of anything else: another set of sites, one
    site's contribution, a duplicate, a masked or scaled mix, another round or another key."""
    if len(set(sites)) != len(sites) or not sites:
        raise CryptoError(f"declared contributors {list(sites)} are empty or repeated")
    part = _parse(data, key._ctx, "aggregate")
    if part.key_id != key.key_id:
        raise CryptoError("the aggregate was encrypted under another key")
    if (part.fields, part.precision_bits) != (enc.fields, enc.precision_bits):
        raise CryptoError("the aggregate's encoding is not the round's")
    sk = key._ctx.secret_key()
    head = [int(v) % BFV_T for v in part.cts[0].decrypt(sk)]
    slots = np.concatenate(
        [np.asarray([int(v) % BFV_T for v in c.decrypt(sk)], dtype=np.int64)
         for c in part.cts[1:]]
    )  # fmt: skip
    weight = head[0]
    expected = key._expected_tags(_scope(protocol_hash, phase, rnd), slots, weight, sites)
    if head[1 : 1 + _TAGS] != expected:
        raise CryptoError(
            f"the aggregate does not verify as the sum of sites {sorted(sites)}' round {rnd} "
            f"contributions to {phase}; refusing to decrypt it"
        )
    if not 1 <= weight <= enc.max_weight_sum:
        raise CryptoError(f"weight sum {weight} overflows the encoding; refusing")
    fields = _unpack(slots, enc, part.length).astype(np.float64)
    mean = fields / weight * (2.0 * enc.clip / enc.levels) - enc.clip
    return DecodedAggregate(mean=mean, weight_sum=weight)
