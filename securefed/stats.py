"""Statistics shared by the evaluation summaries and the audits: one bootstrap interval and one
exact binomial interval.

:func:`bootstrap_interval` is ``scipy.stats.bootstrap`` with the percentile method and a fixed
seed, so every interval securefed reports (per-scanner Dice, attribute-inference R^2,
reconstruction SSIM/PSNR, membership AUC and TPR) follows the same rule: resample the cases, take
the 2.5th and 97.5th percentiles of the statistic (linear interpolation, ``numpy.percentile``).
The benchmarks' paired method comparisons (benchmarks/fets1251_compare.py,
benchmarks/dpsgd_large_sites.py) ask the same function for scipy's BCa interval
(``method="BCa"``), which corrects the percentiles for bias and skew.

:func:`clopper_pearson` is ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``: the
interval of a rate of ``k`` in ``n`` (site attribution, the DP audit's threshold test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CONFIDENCE",
    "METHODS",
    "N_RESAMPLES",
    "bootstrap_interval",
    "bootstrap_intervals",
    "clopper_pearson",
]

CONFIDENCE = 0.95
N_RESAMPLES = 1000
METHODS = ("percentile", "BCa")
"""The interval rules: the percentile one (every report) and scipy's BCa (the benchmarks)."""


def bootstrap_interval(
    statistic: Callable[..., Any],
    samples: Sequence[Any],
    *,
    paired: bool = False,
    vectorized: bool = False,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    method: str = "percentile",
) -> list[float]:
    """Percentile bootstrap interval ``[low, high]`` of ``statistic(*samples)`` (one value).

    ``paired``: the samples are columns of one table (the same rows resampled in each);
    otherwise each sample is resampled on its own (a stratified bootstrap, e.g. members and
    non-members). ``vectorized``: the statistic takes an ``axis`` keyword. A sample of one value
    is the same in every resample (scipy needs two or more), so it is held fixed; with nothing
    left to resample the interval is the statistic's value itself. ``method``: one of METHODS.
    """
    low, high = _bootstrap(statistic, samples, paired, vectorized, n_resamples, confidence, seed,
                           method)  # fmt: skip
    return [float(low), float(high)]


def bootstrap_intervals(
    statistic: Callable[..., Any],
    samples: Sequence[Any],
    *,
    paired: bool = False,
    vectorized: bool = False,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    method: str = "percentile",
) -> list[list[float]]:
    """:func:`bootstrap_interval` of a statistic that returns several values (one 1-D array),
    from the same resamples: one ``[low, high]`` per value."""
    low, high = _bootstrap(statistic, samples, paired, vectorized, n_resamples, confidence, seed,
                           method)  # fmt: skip
    return [[float(lo), float(hi)] for lo, hi in zip(low.ravel(), high.ravel(), strict=True)]


def _bootstrap(
    statistic: Callable[..., Any],
    samples: Sequence[Any],
    paired: bool,
    vectorized: bool,
    n_resamples: int,
    confidence: float,
    seed: int,
    method: str = "percentile",
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import bootstrap

    if method not in METHODS:
        raise ValueError(f"bootstrap method {method!r}: one of {METHODS}")
    arrays = [np.asarray(s) for s in samples]
    varying = [i for i, a in enumerate(arrays) if len(a) >= 2]
    if not varying or (paired and len(varying) < len(arrays)):
        value = np.asarray(statistic(*arrays), dtype=np.float64)
        return value, value
    stat = statistic
    if not paired and len(varying) < len(arrays):  # hold the samples of one value fixed

        def stat(*resampled: Any, axis: int = -1) -> Any:
            full = list(arrays)
            for i, r in zip(varying, resampled, strict=True):
                full[i] = r
            return statistic(*full, axis=axis) if vectorized else statistic(*full)

    res = bootstrap(
        tuple(arrays[i] for i in varying),
        stat,
        n_resamples=n_resamples,
        vectorized=vectorized,
        paired=paired,
        confidence_level=confidence,
        method=method,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return np.asarray(ci.low, dtype=np.float64), np.asarray(ci.high, dtype=np.float64)


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval ``(low, high)`` for a rate of ``k`` in ``n``:
    ``low`` is 0 at ``k = 0`` and ``high`` is 1 at ``k = n``.

    scipy solves the binomial tail equations to an absolute tolerance of about 1e-12, so the
    limits agree with the beta-quantile form (``beta.ppf(a/2, k, n-k+1)``,
    ``beta.ppf(1-a/2, k+1, n-k)``) to within that."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)
