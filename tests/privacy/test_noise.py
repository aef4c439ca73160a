"""Noise sources: CSPRNG by default, seeded only when a simulation protocol allows it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from support.privacy import load
from support.stats import mean_is_zero, scale_is, seeded_bytes

from securefed.errors import PrivacyError
from securefed.privacy import noise as noise_module
from securefed.privacy.noise import (
    SHARE_GRID,
    SecureNoise,
    UnsafeSeededNoise,
    distributed_discrete_gaussian_share,
    distributed_discrete_tau,
    noise_source_for,
)


def test_secure_noise_is_finite_and_fresh():
    src = SecureNoise()
    u = src.uniform((1000,))
    assert np.all((u > 0) & (u < 1))
    a, b = src.gaussian(1.0, (50,)), src.gaussian(1.0, (50,))
    assert np.isfinite(a).all()
    assert not np.array_equal(a, b)
    assert np.isfinite(src.laplace(2.0, (3, 4))).all()


def test_seeded_noise_needs_a_simulation_protocol_with_the_flag(tmp_path):
    plain = load(tmp_path / "a")
    with pytest.raises(PrivacyError, match="unsafe_seeded_noise"):
        noise_source_for(plain.protocol, "site-1", unsafe_seed=1)
    assert isinstance(noise_source_for(plain.protocol, "site-1"), SecureNoise)
    flagged = load(tmp_path / "b", privacy="unsafe_seeded_noise = true")
    src = noise_source_for(flagged.protocol, "site-1", "r1", unsafe_seed=7)
    again = noise_source_for(flagged.protocol, "site-1", "r1", unsafe_seed=7)
    other = noise_source_for(flagged.protocol, "site-2", "r1", unsafe_seed=7)
    assert isinstance(src, UnsafeSeededNoise)
    x = src.gaussian(1.0, (5,))
    assert np.array_equal(x, again.gaussian(1.0, (5,)))
    assert not np.array_equal(x, other.gaussian(1.0, (5,)))


def test_distributed_shares_sum_to_the_target_variance():
    src = UnsafeSeededNoise(0, "test")
    total = sum(distributed_discrete_gaussian_share(src, 3.0, 5, (20000,)) for _ in range(5))
    assert np.std(total) == pytest.approx(3.0, rel=0.03)
    share = distributed_discrete_gaussian_share(src, 3.0, 5, (20000,), min_contributors=3)
    assert np.std(share) == pytest.approx(3.0 / np.sqrt(3), rel=0.03)
    with pytest.raises(PrivacyError):
        distributed_discrete_gaussian_share(src, 3.0, 5, (2,), min_contributors=6)


def test_distributed_shares_are_exact_discrete_gaussians_on_the_grid():
    """Finding 2 for the secure-aggregate shares: OpenDP's exact sampler on SHARE_GRID * Z, no
    floating-point Gaussian; a share too small for the sum to be one discrete Gaussian refused.

    OpenDP draws from its own CSPRNG (no seed): the scale check fails a correct sampler with
    probability 1e-10 (support.stats), and rejects a share 10 % off."""
    share = distributed_discrete_gaussian_share(SecureNoise(), 2.0, 3, (20000,))
    units = share / SHARE_GRID
    assert np.array_equal(units, np.round(units))  # every value an integer number of grid steps
    assert scale_is(share, 2.0 / np.sqrt(3))
    assert mean_is_zero(share, 2.0 / np.sqrt(3))
    assert not scale_is(share, 1.1 * 2.0 / np.sqrt(3))  # the rule has power at this n
    assert distributed_discrete_tau(2.0 / SHARE_GRID / np.sqrt(3), 3) == 0.0
    assert distributed_discrete_tau(0.3, 3) > 1e-3  # Kairouz et al.: tiny shares do not add up
    with pytest.raises(PrivacyError, match="too small"):
        distributed_discrete_gaussian_share(SecureNoise(), 0.3 * SHARE_GRID, 3, (4,))


@pytest.mark.slow
def test_csprng_noise_has_the_calibrated_scale(monkeypatch):
    """SecureNoise's own arithmetic (53-bit uniforms, inverse CDFs) on seeded bytes in place of
    os.urandom, so the KS p-values are fixed numbers (no chance failure); that the bytes do come
    from os.urandom is checked below."""
    monkeypatch.setattr(noise_module, "_random_bytes", seeded_bytes(2024))
    src = SecureNoise()
    g = src.gaussian(2.5, (200_000,))
    assert stats.kstest(g, stats.norm(scale=2.5).cdf).pvalue > 1e-4
    lap = src.laplace(0.7, (200_000,))
    assert stats.kstest(lap, stats.laplace(scale=0.7).cdf).pvalue > 1e-4
    # a 5% wrong scale is detected by the same test
    assert stats.kstest(g, stats.norm(scale=2.5 * 1.05).cdf).pvalue < 1e-4
    assert stats.kstest(lap, stats.laplace(scale=0.7 * 1.05).cdf).pvalue < 1e-4


def test_secure_noise_draws_from_the_os_csprng(monkeypatch):
    calls = []

    def urandom(n: int) -> bytes:
        calls.append(n)
        return bytes(n)

    monkeypatch.setattr(noise_module.os, "urandom", urandom)
    u = SecureNoise().uniform((4,))
    assert calls == [32]
    assert np.all(u == 0.5 / 2**53)


def test_privacy_layer_imports_no_higher_layer():
    import subprocess
    import sys

    code = (
        "import sys, securefed.privacy, securefed.privacy.protection\n"
        "bad = {'torch', 'flwr', 'cryptography', 'tenseal'} & {m.split('.')[0] for m in "
        "sys.modules}\nprint(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
