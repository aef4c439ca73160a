"""Acceptance rules for statistical checks of samplers that cannot be seeded (OpenDP's exact
discrete samplers draw from their own CSPRNG): each rule states the probability that a CORRECT
sampler fails it, FAILURE_PROBABILITY = 1e-10, so the suite never fails by chance in practice,
and each test shows its rule still rejects a wrong scale. Samplers that can be seeded are seeded
instead (``seeded_bytes``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

__all__ = ["FAILURE_PROBABILITY", "mean_is_zero", "scale_is", "seeded_bytes"]

FAILURE_PROBABILITY = 1e-10


def scale_is(sample: np.ndarray, sigma: float, p: float = FAILURE_PROBABILITY) -> bool:
    """Whether i.i.d. centred ``sample`` is consistent with N(0, sigma^2): sum(x^2) / sigma^2 is
    chi-square with n degrees of freedom, accepted inside its central 1 - p interval (a
    correct Gaussian sampler fails with probability exactly ``p``; a discrete Gaussian of
    sigma >> 1 grid steps has the same variance up to exp(-2 pi^2 sigma^2))."""
    x = np.asarray(sample, dtype=np.float64).ravel()
    statistic = float(np.sum((x / sigma) ** 2))
    lo, hi = stats.chi2.ppf([p / 2, 1 - p / 2], x.size)
    return bool(lo <= statistic <= hi)


def mean_is_zero(sample: np.ndarray, sigma: float, p: float = FAILURE_PROBABILITY) -> bool:
    """Whether the mean of i.i.d. ``sample`` of standard deviation ``sigma`` is consistent with 0:
    |mean| <= z_{1-p/2} sigma / sqrt(n) (z = 6.5 at p = 1e-10; two-sided, normal)."""
    x = np.asarray(sample, dtype=np.float64).ravel()
    z = float(stats.norm.isf(p / 2))
    return bool(abs(float(np.mean(x))) <= z * sigma / np.sqrt(x.size))


def seeded_bytes(seed: int) -> Callable[[int], bytes]:
    """A stand-in for ``os.urandom``: ``n`` bytes from a seeded generator (tests only)."""
    rng = np.random.default_rng(seed)
    return rng.bytes
