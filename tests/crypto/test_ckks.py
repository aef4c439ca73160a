"""CKKS helpers: exactness of encrypted sums, public context cannot decrypt, serialization."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.crypto.ckks import (
    PRESETS,
    CkksPublicContext,
    EncryptedVector,
    load_public_context,
    load_secret_context,
    make_context,
    sum_encrypted,
)
from securefed.errors import CryptoError


@pytest.fixture(scope="module")
def secret():
    return make_context()


def test_sum_of_ten_is_exact_enough(secret):
    public = load_public_context(secret.public_bytes())
    rng = np.random.default_rng(0)
    n = 3 * secret.params.slots + 17  # several chunks, a partial last one
    updates = [rng.uniform(-1, 1, n).astype(np.float32) for _ in range(10)]
    # each site encrypts with the public context; the aggregator sums serialized ciphertexts
    wire = [public.encrypt(u).to_bytes() for u in updates]
    total = sum_encrypted(EncryptedVector.from_bytes(w, public) for w in wire)
    result = secret.decrypt(EncryptedVector.from_bytes(total.to_bytes(), public))
    truth = np.sum(np.stack(updates).astype(np.float64), axis=0)
    assert result.shape == (n,)
    assert np.max(np.abs(result - truth)) < 1e-6


def test_paper_preset(secret):
    ctx = make_context(PRESETS["paper"])
    x = np.linspace(-3, 3, 100)
    acc = ctx.encrypt(x)
    acc += ctx.encrypt(x)
    assert np.max(np.abs(ctx.decrypt(acc) - 2 * x)) < 1e-6


def test_public_context_cannot_decrypt(secret):
    public = secret.public()
    assert isinstance(public, CkksPublicContext)
    assert not hasattr(public, "decrypt")
    enc = public.encrypt(np.ones(10))
    with pytest.raises(ValueError, match="secret"):
        enc.chunks[0].decrypt()  # TenSEAL itself refuses: the key is not there
    with pytest.raises(CryptoError, match="must not hold the secret key"):
        load_public_context(secret.secret_bytes())
    assert len(secret.public_bytes()) < len(secret.secret_bytes())


def test_secret_context_roundtrip(secret):
    again = load_secret_context(secret.secret_bytes())
    enc = secret.encrypt(np.array([1.25, -2.5]))
    assert np.allclose(again.decrypt(enc), [1.25, -2.5], atol=1e-7)
    assert "secret" in repr(again)


def test_input_checks(secret):
    with pytest.raises(CryptoError, match="flat"):
        secret.encrypt(np.ones((2, 2)))
    with pytest.raises(CryptoError, match="NaN"):
        secret.encrypt(np.array([np.nan]))
    with pytest.raises(CryptoError, match="range"):
        secret.encrypt(np.array([secret.params.max_abs * 2]))
    a, b = secret.encrypt(np.ones(3)), secret.encrypt(np.ones(4))
    with pytest.raises(CryptoError, match="lengths"):
        a += b


def test_serialization_is_strict(secret):
    data = secret.encrypt(np.ones(5)).to_bytes()
    for bad in (data[:3], data[:-1], data + b"\0", b"XXXX" + data[4:]):
        with pytest.raises(CryptoError):
            EncryptedVector.from_bytes(bad, secret)
    with pytest.raises(CryptoError):
        load_public_context(b"SFCX")
