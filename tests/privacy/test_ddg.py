"""The distributed discrete Gaussian of client-level DP (securefed.privacy.ddg): the rotation is
orthogonal, the conditional rounding keeps the norm bound, neighbouring updates change the sum by
at most the sensitivity, Flower's SecAgg+ arithmetic sums the encoded vectors exactly modulo m,
the charged event is Proposition 14 of Kairouz et al., and the shares are sized for collusion."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from support.stats import mean_is_zero, scale_is

from securefed.errors import CalibrationError
from securefed.privacy.ddg import (
    _multiplier,
    conditional_round,
    decode_sum,
    encode_update,
    padded_dim,
    plan_client_dp,
    rotate,
    rotation_seed,
    rounded_l2_bound,
    unrotate,
)
from securefed.privacy.noise import SecureNoise, distributed_discrete_tau

BETA = math.exp(-0.5)


def _plan(dim=300, *, epsilon=4.0, rounds=5, clip=1.0, modulus=2**22, n_max=3, honest=2,
          beta=BETA):  # fmt: skip
    return plan_client_dp(epsilon=epsilon, delta=1e-6, rounds=rounds, clip=clip, dim=dim,
                          modulus=modulus, n_max=n_max, honest=honest, beta=beta,
                          accountant="rdp")  # fmt: skip


class _Zero:
    name = "zero"

    def discrete_gaussian(self, sigma, shape):
        return np.zeros(shape, np.int64)


class _Fixed:
    """Noise given in advance (tests only)."""

    name = "fixed"

    def __init__(self, values):
        self.values = values

    def discrete_gaussian(self, sigma, shape):
        return np.asarray(self.values, np.int64).reshape(shape)


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 3000), seed=st.integers(0, 2**63 - 1), scale=st.floats(1e-3, 1e3))
def test_rotation_is_orthogonal_and_inverts(dim, seed, scale):
    plan = _plan(dim)
    x = np.random.default_rng(seed % 2**32).normal(size=dim) * scale
    y = rotate(x, plan, seed)
    assert y.shape == (padded_dim(dim),)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-9)
    np.testing.assert_allclose(unrotate(y, plan, seed), x, rtol=1e-9, atol=1e-9 * scale)


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 2000), norm=st.floats(0.0, 500.0), seed=st.integers(0, 2**32 - 1))
def test_conditional_rounding_keeps_the_norm_bound(dim, norm, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=dim)
    x *= norm / max(np.linalg.norm(x), 1e-12)
    for beta in (0.0, BETA):
        bound = rounded_l2_bound(norm, dim, beta)
        r = conditional_round(x, bound, rng)
        assert r.dtype == np.int64
        assert np.all(np.abs(r - x) < 1)
        assert np.linalg.norm(r) <= bound


def test_rounding_is_unbiased():
    x = np.array([0.25, -1.5, 3.9, 0.0])
    rng = np.random.default_rng(0)
    mean = np.mean([conditional_round(x, 1e9, rng) for _ in range(20000)], axis=0)
    np.testing.assert_allclose(mean, x, atol=0.02)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), a=st.floats(0.0, 50.0), b=st.floats(0.0, 50.0))
def test_neighbouring_updates_change_the_sum_by_at_most_the_sensitivity(seed, a, b):
    """Any two updates of one site (whatever its data: one patient replaced may change the whole
    clipped update) give integer vectors at most ``plan.sensitivity`` apart before the noise."""
    plan = _plan(500, clip=1.0)
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=500) * a, rng.normal(size=500) * b
    s = rotation_seed("sha256:t", "global", 1)
    x = encode_update(u, plan, s, _Zero(), rng)
    y = encode_update(v, plan, s, _Zero(), rng)
    m = plan.modulus
    diff = np.mod(x - y + m // 2, m) - m // 2  # the vectors are sent modulo m
    assert np.linalg.norm(diff) <= plan.sensitivity
    # Every patient-level relation: twice the bound (tests/privacy/test_ddg_sensitivity.py).
    assert plan.sensitivity == pytest.approx(2 * plan.l2_bound)


def _secaggplus_mean(vectors: list[np.ndarray], modulus: int) -> np.ndarray:
    """Flower's SecAgg+ arithmetic on the sites' vectors (weight 1 each, clipping range m/2,
    quantisation range m; the masks cancel modulo 2^32), as its workflow computes the mean."""
    q = [quantize([v], modulus / 2, modulus)[0].astype(np.int64) for v in vectors]
    total = np.mod(np.sum(q, axis=0), 2**32)
    n = len(vectors)
    out = dequantize([total], modulus / 2, modulus)[0] - (n - 1) * modulus / 2
    return out * (modulus / (n * modulus))


def _centred(x: np.ndarray, m: int) -> np.ndarray:
    return np.mod(x + m // 2, m) - m // 2


@pytest.mark.parametrize("n", [2, 3, 7])
def test_secaggplus_sums_the_encoded_updates_exactly(n):
    """Decoding Flower's SecAgg+ mean gives exactly the centred sum modulo m of the sites'
    integers (noise that wraps around the modulus included), rotated back; with noise that
    does not wrap, the mean update up to the rounding."""
    plan = _plan(1000, n_max=n, honest=2)
    m = plan.modulus
    rng = np.random.default_rng(n)
    seed = rotation_seed("sha256:t", "cluster-1", 4)
    updates = [rng.normal(size=1000) * 0.01 for _ in range(n)]
    for spread in (m, m // (8 * n)):
        noise = [rng.integers(-spread, spread, size=plan.padded_dim) for _ in range(n)]
        vectors = [encode_update(u, plan, seed, _Fixed(z), np.random.default_rng(i))
                   for i, (u, z) in enumerate(zip(updates, noise, strict=True))]  # fmt: skip
        assert all(np.all((v >= -m // 2) & (v < m // 2)) for v in vectors)
        mean = decode_sum(_secaggplus_mean(vectors, m), n, plan, seed)
        assert mean.shape == (1000,)
        rounded = [encode_update(u, plan, seed, _Zero(), np.random.default_rng(i))
                   for i, u in enumerate(updates)]  # fmt: skip
        # A vector is ``(x + z) mod m - m/2``: add m/2 back to each before summing.
        total = _centred(np.sum(rounded, axis=0) + n * (m // 2) + np.sum(noise, axis=0), m)
        exact = unrotate(total * plan.gamma, plan, seed) / n
        np.testing.assert_allclose(mean, exact, rtol=0, atol=1e-12)
        if spread < m // 2:  # no wrap: the noise comes off as it went in, the rest is rounding
            noise_part = unrotate(np.sum(noise, axis=0) * plan.gamma, plan, seed) / n
            err = mean - noise_part - np.mean(updates, axis=0)
            assert np.linalg.norm(err) <= math.sqrt(plan.padded_dim) * plan.gamma


def test_round_event_is_proposition_14():
    """The charged Gaussian event's RDP equals term 3 of Proposition 14 (Kairouz et al., arXiv
    2102.06387): alpha/2 (D / (sqrt(n) s) + sqrt(d) tau)^2, and the tau term counts when the
    shares are coarse."""
    plan = _plan(4096)
    l2 = plan.sensitivity / (math.sqrt(plan.honest) * plan.sigma_units)
    term3 = lambda a: a / 2 * (l2 + math.sqrt(plan.padded_dim) * plan.tau) ** 2  # noqa: E731
    acc = dp_accounting.rdp.RdpAccountant(orders=[2.0, 8.0, 32.0])
    acc.compose(plan.round_event())
    for order, rdp in zip([2.0, 8.0, 32.0], acc._rdp, strict=True):
        assert rdp == pytest.approx(term3(order), rel=1e-9)
    coarse, tau = _multiplier(10.0, 0.4, 3, 4096)
    assert tau == pytest.approx(distributed_discrete_tau(0.4, 3))
    assert tau > 1e-3
    assert coarse < _multiplier(10.0, 0.4, 1, 4096)[0] * math.sqrt(3)  # tau costs privacy


def test_plan_fits_the_budget_tightly():
    plan = _plan(5000, epsilon=2.0, rounds=20)
    events = [dp_accounting.SelfComposedDpEvent(plan.round_event(), 20)]
    from securefed.privacy.accounting import accountant_epsilon

    assert accountant_epsilon(events, 1e-6, "rdp") <= 2.0
    looser = dp_accounting.GaussianDpEvent(0.98 * plan.noise_multiplier)
    assert accountant_epsilon([dp_accounting.SelfComposedDpEvent(looser, 20)], 1e-6, "rdp") > 2.0


def test_shares_are_sized_for_the_colluding_sites():
    """With t colluders the n - t honest shares alone carry the noise: fewer honest sites, a
    larger share each, the same aggregate noise multiplier."""
    all_honest = _plan(2000, n_max=4, honest=4)
    one_left = _plan(2000, n_max=4, honest=1)
    ratio = (one_left.sigma_units * one_left.gamma) / (all_honest.sigma_units * all_honest.gamma)
    assert ratio == pytest.approx(2.0, rel=0.01)  # each share, in model units
    for plan in (all_honest, one_left):
        honest_std = math.sqrt(plan.honest) * plan.sigma_units
        assert plan.sensitivity / honest_std <= 1 / plan.noise_multiplier + 1e-12


def test_the_honest_shares_add_up_to_the_planned_noise():
    plan = _plan(100, honest=2, n_max=2)
    sigma = plan.sigma_units / 1000  # OpenDP's exact sampler, scaled down for a quick check
    shares = [SecureNoise().discrete_gaussian(sigma, (20000,)) for _ in range(plan.honest)]
    total = np.sum(shares, axis=0)
    # OpenDP's CSPRNG cannot be seeded: each check fails a correct sampler with probability
    # 1e-10 (support.stats), and the scale check rejects a total 10 % off.
    planned = math.sqrt(plan.honest) * sigma
    assert scale_is(total, planned)
    assert mean_is_zero(total, planned)
    assert not scale_is(total, 1.1 * planned)


def test_calibration_refuses_what_does_not_fit_the_modulus():
    with pytest.raises(CalibrationError, match="quantization_range"):
        _plan(1_000_000, epsilon=0.01, rounds=500, modulus=2**16, n_max=50, honest=2)
    with pytest.raises(CalibrationError, match="power of two"):
        _plan(100, modulus=3 * 2**20)
