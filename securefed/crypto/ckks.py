"""CKKS (TenSEAL) helpers for homomorphic aggregation of model updates (additions only).

Roles: the *key holder* (the sites, who agree on one secret context out of band) keeps a
:class:`CkksSecretContext`; the *aggregator* gets only :meth:`CkksSecretContext.public_bytes`
(public key, no secret key, no relinearisation or Galois keys) and can encrypt and add but never
decrypt. Each site sends ``encrypt(update)``; the aggregator sums the ciphertexts in place;
a key holder decrypts the sum only.

Leaves a site: the ciphertexts (about 32 MB per million float32 values with the default
parameters), which reveal the vector length and nothing else to a party without the secret key.
CKKS ciphertexts are malleable: a modified ciphertext decrypts to garbage without any error, so
they must travel inside signed envelopes (securefed.transport) or an authenticated channel.

Parameters (measured, see benchmarks/results/crypto.md): the default ``additive`` preset is
N=8192 with coefficient moduli [60, 60] and scale 2^40: a fresh ciphertext has no level to spare
for multiplication, which aggregation does not need; absolute error about 3e-8 on sums of ten
vectors in [-1, 1]; values (and sums) must stay below ``max_abs`` = 2^18 in magnitude. The
``paper`` preset ([60, 40, 40, 60]) is 2.5x larger and slower, with the same precision.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from securefed.errors import CryptoError

__all__ = [
    "PRESETS",
    "CkksParams",
    "CkksPublicContext",
    "CkksSecretContext",
    "EncryptedVector",
    "load_public_context",
    "load_secret_context",
    "make_context",
    "sum_encrypted",
]

_MAGIC = b"SFCK"
_VERSION = 1
_HEAD = struct.Struct("<4sHIQ")  # magic, version, n_chunks, length
_LEN = struct.Struct("<Q")
_MAX_CHUNK_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters: ring degree N, coefficient modulus bit sizes, scale 2^scale_bits."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        """Values per ciphertext (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def max_abs(self) -> float:
        """Largest magnitude a value (or a sum) may take and still decrypt correctly."""
        data_bits = sum(self.coeff_mod_bit_sizes[:-1])
        return float(2 ** min(data_bits - self.scale_bits - 2, 60))


PRESETS: dict[str, CkksParams] = {
    "additive": CkksParams(),
    "paper": CkksParams(8192, (60, 40, 40, 60), 40),
}


@dataclass
class EncryptedVector:
    """A float vector encrypted in chunks of ``params.slots`` values."""

    chunks: list[ts.CKKSVector]
    length: int
    params: CkksParams

    def __iadd__(self, other: EncryptedVector) -> EncryptedVector:
        """Add ``other`` in place (never copies a ciphertext: CKKSVector.copy() clones the whole
        context)."""
        if other.length != self.length or len(other.chunks) != len(self.chunks):
            raise CryptoError(
                f"cannot add encrypted vectors of lengths {self.length} and {other.length}"
            )
        if other.params != self.params:
            raise CryptoError("cannot add encrypted vectors made with different CKKS parameters")
        for mine, theirs in zip(self.chunks, other.chunks, strict=True):
            mine += theirs
        return self

    def to_bytes(self) -> bytes:
        """Serialize (length-prefixed TenSEAL ciphertexts, no pickle)."""
        parts = [_HEAD.pack(_MAGIC, _VERSION, len(self.chunks), self.length)]
        for chunk in self.chunks:
            data = chunk.serialize()
            parts += [_LEN.pack(len(data)), data]
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls, data: bytes, context: CkksPublicContext | CkksSecretContext
    ) -> EncryptedVector:
        """Strictly parse :meth:`to_bytes` output against ``context``."""
        view = memoryview(data)
        if len(view) < _HEAD.size:
            raise CryptoError("encrypted vector is truncated")
        magic, version, n_chunks, length = _HEAD.unpack_from(view, 0)
        if magic != _MAGIC or version != _VERSION:
            raise CryptoError("not a securefed encrypted vector (bad magic or version)")
        params = context.params
        if n_chunks != math.ceil(length / params.slots):
            raise CryptoError(
                f"encrypted vector: {n_chunks} chunks do not fit length {length} "
                f"({params.slots} slots per chunk); wrong parameters?"
            )
        pos = _HEAD.size
        chunks: list[ts.CKKSVector] = []
        for i in range(n_chunks):
            if pos + _LEN.size > len(view):
                raise CryptoError(f"encrypted vector is truncated at chunk {i}")
            (size,) = _LEN.unpack_from(view, pos)
            pos += _LEN.size
            if size > _MAX_CHUNK_BYTES or pos + size > len(view):
                raise CryptoError(f"encrypted vector chunk {i} has an invalid length")
            try:
                chunks.append(ts.ckks_vector_from(context._ctx, bytes(view[pos : pos + size])))
            except (ValueError, RuntimeError) as exc:
                raise CryptoError(f"encrypted vector chunk {i} is not a CKKS ciphertext") from exc
            pos += size
        if pos != len(view):
            raise CryptoError("encrypted vector has trailing bytes")
        return cls(chunks=chunks, length=length, params=params)


class CkksPublicContext:
    """The aggregator's context: encrypts and adds, cannot decrypt."""

    def __init__(self, ctx: ts.Context, params: CkksParams) -> None:
        if ctx.has_secret_key():
            raise CryptoError("a public CKKS context must not hold the secret key")
        self._ctx = ctx
        self.params = params

    def encrypt(self, vector: np.ndarray) -> EncryptedVector:
        """Encrypt a flat float vector (values within ``params.max_abs``) in chunks.

        Leaves the caller only if it sends the result: the ciphertexts."""
        return _encrypt(self._ctx, self.params, vector)

    def to_bytes(self) -> bytes:
        return _pack_context(self._ctx, self.params, secret=False)


class CkksSecretContext:
    """The key holder's context: everything the public one does, plus decryption."""

    def __init__(self, ctx: ts.Context, params: CkksParams) -> None:
        if not ctx.has_secret_key():
            raise CryptoError("a secret CKKS context needs the secret key")
        self._ctx = ctx
        self.params = params

    def __repr__(self) -> str:
        return f"CkksSecretContext({self.params}, <secret>)"

    def encrypt(self, vector: np.ndarray) -> EncryptedVector:
        return _encrypt(self._ctx, self.params, vector)

    def decrypt(self, encrypted: EncryptedVector) -> np.ndarray:
        """Decrypt to a float64 vector of the original length."""
        if encrypted.params != self.params:
            raise CryptoError("encrypted vector was made with other CKKS parameters")
        key = self._ctx.secret_key()
        out = np.empty(encrypted.length, dtype=np.float64)
        slots = self.params.slots
        for i, chunk in enumerate(encrypted.chunks):
            values = chunk.decrypt(key)
            out[i * slots : i * slots + len(values)] = values
        return out

    def public(self) -> CkksPublicContext:
        """A context without the secret key (for the aggregator)."""
        return load_public_context(self.public_bytes())

    def public_bytes(self) -> bytes:
        """Serialized public context: public key only (no secret, relin or Galois keys)."""
        return _pack_context(self._ctx, self.params, secret=False)

    def secret_bytes(self) -> bytes:
        """Serialized secret context: store it like a private key (0600, never sent)."""
        return _pack_context(self._ctx, self.params, secret=True)


def make_context(params: CkksParams | None = None) -> CkksSecretContext:
    """A fresh CKKS key pair (the key holder's context)."""
    params = params or PRESETS["additive"]
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
    except ValueError as exc:
        raise CryptoError(f"invalid CKKS parameters {params}: {exc}") from exc
    ctx.global_scale = 2.0**params.scale_bits
    return CkksSecretContext(ctx, params)


def _encrypt(ctx: ts.Context, params: CkksParams, vector: np.ndarray) -> EncryptedVector:
    flat = np.asarray(vector, dtype=np.float64)
    if flat.ndim != 1:
        raise CryptoError(f"CKKS encrypts flat vectors; got shape {flat.shape} (use .ravel())")
    if flat.size and not np.all(np.isfinite(flat)):
        raise CryptoError("cannot encrypt NaN or infinite values")
    if flat.size and float(np.max(np.abs(flat))) > params.max_abs:
        raise CryptoError(f"values exceed the CKKS range |x| <= {params.max_abs:g}; scale them")
    slots = params.slots
    chunks = [ts.ckks_vector(ctx, flat[i : i + slots]) for i in range(0, flat.size, slots)]
    return EncryptedVector(chunks=chunks, length=int(flat.size), params=params)


_CTX_HEAD = struct.Struct("<4sHIIB")  # magic, version, N, scale_bits, n_primes


def _pack_context(ctx: ts.Context, params: CkksParams, secret: bool) -> bytes:
    data = ctx.serialize(
        save_public_key=True,
        save_secret_key=secret,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    head = _CTX_HEAD.pack(
        b"SFCX",
        _VERSION,
        params.poly_modulus_degree,
        params.scale_bits,
        len(params.coeff_mod_bit_sizes),
    )
    return head + bytes(params.coeff_mod_bit_sizes) + data


def _unpack_context(data: bytes) -> tuple[ts.Context, CkksParams]:
    if len(data) < _CTX_HEAD.size:
        raise CryptoError("CKKS context is truncated")
    magic, version, n, scale_bits, n_primes = _CTX_HEAD.unpack_from(data, 0)
    if magic != b"SFCX" or version != _VERSION:
        raise CryptoError("not a securefed CKKS context (bad magic or version)")
    start = _CTX_HEAD.size + n_primes
    params = CkksParams(n, tuple(data[_CTX_HEAD.size : start]), scale_bits)
    try:
        ctx = ts.context_from(data[start:])
    except (ValueError, RuntimeError) as exc:
        raise CryptoError("CKKS context does not parse") from exc
    ctx.global_scale = 2.0**scale_bits
    return ctx, params


def load_public_context(data: bytes) -> CkksPublicContext:
    """The aggregator's context from :meth:`CkksSecretContext.public_bytes`; refuses one that
    carries the secret key."""
    return CkksPublicContext(*_unpack_context(data))


def load_secret_context(data: bytes) -> CkksSecretContext:
    """The key holder's context from :meth:`CkksSecretContext.secret_bytes`."""
    return CkksSecretContext(*_unpack_context(data))


def sum_encrypted(vectors: Iterable[EncryptedVector]) -> EncryptedVector:
    """Sum ciphertexts; the first vector is used as the accumulator (modified in place)."""
    iterator = iter(vectors)
    try:
        acc = next(iterator)
    except StopIteration as exc:
        raise CryptoError("nothing to sum") from exc
    for vec in iterator:
        acc += vec
    return acc
