"""Pairwise-mask secure summation: the sum is exact, single vectors are masked, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.crypto.masking import (
    MaskingParty,
    decode_fixed_point,
    encode_fixed_point,
    unmask_sum,
)
from securefed.errors import AggregationError, CryptoError


def _parties(n: int) -> tuple[list[MaskingParty], dict[str, bytes]]:
    parties = [MaskingParty.generate(f"site-{i}") for i in range(n)]
    return parties, {p.party_id: p.public_key for p in parties}


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 5),
    values=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=20),
)
def test_sum_of_masked_vectors_is_the_sum(n: int, values: list[float]) -> None:
    parties, keys = _parties(n)
    vecs = [np.array(values) * (i + 1) for i in range(n)]
    masked = {
        p.party_id: p.mask(v, keys, context=b"ctx", round_label=b"r0")
        for p, v in zip(parties, vecs, strict=True)
    }
    total = unmask_sum(masked, list(keys))
    assert np.allclose(total, sum(vecs), atol=1e-5 * n)


def test_masked_vector_hides_the_value_and_masks_change_per_round() -> None:
    parties, keys = _parties(3)
    v = np.arange(50, dtype=float)
    m1 = parties[0].mask(v, keys, context=b"ctx", round_label=b"r1")
    m2 = parties[0].mask(v, keys, context=b"ctx", round_label=b"r2")
    plain = encode_fixed_point(v)
    assert m1.dtype == np.uint64
    assert not np.any(m1 == plain)
    assert not np.any(m1 == m2)
    assert np.allclose(decode_fixed_point(plain), v)


def test_missing_party_is_refused() -> None:
    parties, keys = _parties(3)
    masked = {p.party_id: p.mask(np.ones(4), keys, context=b"c", round_label=b"r") for p in parties}
    del masked["site-1"]
    with pytest.raises(AggregationError, match="missing"):
        unmask_sum(masked, list(keys))


def test_bad_key_and_range_are_refused() -> None:
    party = MaskingParty.generate("a")
    with pytest.raises(CryptoError):
        party.pair_seed("b", b"\x00" * 5, b"c")
    with pytest.raises(AggregationError, match="fixed-point range"):
        encode_fixed_point(np.array([1e40]))
    with pytest.raises(AggregationError, match="NaN"):
        encode_fixed_point(np.array([np.nan]))
