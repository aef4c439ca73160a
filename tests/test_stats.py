"""The one bootstrap interval (securefed.stats): scipy's percentile bootstrap, seeded, with the
edge cases the reports meet (one case in a group, a class of one)."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.stats import bootstrap_interval, bootstrap_intervals


def test_interval_of_a_mean_is_seeded_and_brackets_it() -> None:
    values = np.random.default_rng(1).uniform(0.6, 0.95, size=10)
    ci = bootstrap_interval(np.mean, [values], vectorized=True, n_resamples=2000)
    assert ci == bootstrap_interval(np.mean, [values], vectorized=True, n_resamples=2000)
    assert values.min() < ci[0] < values.mean() < ci[1] < values.max()
    # a higher confidence takes wider percentiles of the same resamples
    wider = bootstrap_interval(np.mean, [values], vectorized=True, confidence=0.99)
    assert wider[0] < ci[0]
    assert wider[1] > ci[1]


def test_a_single_value_gives_that_value() -> None:
    assert bootstrap_interval(np.mean, [np.array([0.84])], vectorized=True) == [0.84, 0.84]
    assert bootstrap_interval(lambda a, b: float(a[0] - b[0]), [[2.0], [0.5]]) == [1.5, 1.5]


def test_paired_samples_are_resampled_together() -> None:
    x = np.arange(20.0)
    # paired: every resample keeps x[i] with y[i], so x - y is always 0
    assert bootstrap_interval(lambda a, b: float(np.mean(a - b)), [x, x], paired=True) == [0, 0]
    lo, hi = bootstrap_interval(lambda a, b: float(np.mean(a) - np.mean(b)), [x, x])
    assert lo < 0 < hi  # resampled on their own, the two means differ


def test_a_sample_of_one_is_held_fixed_and_several_values_share_the_resamples() -> None:
    rng = np.random.default_rng(2)
    many = rng.normal(size=30)
    cis = bootstrap_intervals(lambda a, b: np.array([a.mean() - b[0], a.mean()]), [many, [1.0]])
    assert len(cis) == 2
    (lo0, hi0), (lo1, hi1) = cis
    assert np.isclose(lo0, lo1 - 1.0)
    assert np.isclose(hi0, hi1 - 1.0)
    assert lo1 < many.mean() < hi1


def test_clopper_pearson_is_the_beta_quantile_interval() -> None:
    """scipy's exact binomtest interval gives the limits the hand-written beta-quantile form gave
    (to scipy's root-finding tolerance), including the open ends at k = 0 and k = n."""
    from scipy.stats import beta

    from securefed.stats import clopper_pearson

    cases = [(30, 100, 0.95), (0, 100, 0.95), (100, 100, 0.95), (7, 10, 0.95), (1, 1, 0.95),
             (3, 20_000, 0.999), (19_990, 20_000, 0.999), (0, 4_000_000, 0.999)]  # fmt: skip
    for k, n, confidence in cases:
        a = 1.0 - confidence
        old_lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
        old_hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
        lo, hi = clopper_pearson(k, n, confidence)
        assert abs(lo - old_lo) < 1e-11 and abs(hi - old_hi) < 1e-11, (k, n, lo, hi)
        assert (lo == 0.0) == (k == 0)
        assert (hi == 1.0) == (k == n)


def test_the_benchmarks_bca_interval_is_scipys_from_the_same_seed() -> None:
    """``method="BCa"`` (the benchmarks' paired comparisons) is scipy's BCa interval drawn from
    the same seeded generator; the reports' default stays the percentile rule."""
    from scipy.stats import bootstrap

    diff = np.random.default_rng(3).normal(0.02, 0.05, size=40)
    ours = bootstrap_interval(np.mean, [diff], vectorized=True, n_resamples=2000, method="BCa")
    ref = bootstrap((diff,), np.mean, n_resamples=2000, method="BCa",
                    rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    assert ours == [float(ref.low), float(ref.high)]
    assert ours != bootstrap_interval(np.mean, [diff], vectorized=True, n_resamples=2000)
    with pytest.raises(ValueError, match="bootstrap method"):
        bootstrap_interval(np.mean, [diff], method="basic")
