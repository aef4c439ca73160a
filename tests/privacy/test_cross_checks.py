"""Independent cross-checks of the privacy arithmetic (privacy-claims issue, permanent tests):
the analytic Gaussian sigma against an mpmath evaluation of the Balle-Wang condition, the DP-SGD
plan against Opacus' own RDP accountant, the clustering statistics' sensitivities by brute
force, and an empirical threshold audit of the discrete release mechanisms whose
Clopper-Pearson lower bound on epsilon never exceeds the claim (and does for a miscalibrated
mechanism, so the audit can fail)."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from scipy.stats import beta

from securefed.clustering.secure import SecurePlan, cluster_stats, histogram_counts
from securefed.privacy.calibration import discrete_gaussian_sigma, gaussian_sigma, laplace_scale
from securefed.privacy.noise import SecureNoise


def _balle_wang_delta(eps: float, sens: float, sigma: float) -> mpmath.mpf:
    """delta(eps) of the Gaussian mechanism, at 50 digits (no scipy)."""
    mpmath.mp.dps = 50
    a, b = mpmath.mpf(sens) / (2 * sigma), mpmath.mpf(eps) * sigma / sens
    return mpmath.ncdf(a - b) - mpmath.e**eps * mpmath.ncdf(-a - b)


@pytest.mark.parametrize(
    ("eps", "delta", "sens"),
    [(0.5, 1e-5, 1.0), (1.0, 1e-6, 2.5), (4.0, 1e-5, 19.3), (16.0, 1e-8, 3.0)],
)
def test_analytic_sigma_agrees_with_an_mpmath_evaluation(eps, delta, sens) -> None:
    sigma = gaussian_sigma(eps, delta, sens)
    assert _balle_wang_delta(eps, sens, sigma) <= delta * (1 + 1e-9)
    assert _balle_wang_delta(eps, sens, sigma * (1 - 1e-3)) > delta  # and it is tight
    assert discrete_gaussian_sigma(eps, delta, sens) >= sigma  # the zCDP route never uses less


def test_dpsgd_plan_agrees_with_opacus_rdp_accountant() -> None:
    """The plan's composed epsilon (dp-accounting RDP, steps of GaussianDpEvent(m / 2), no
    sampling amplification) against Opacus' RDPAccountant with sample rate 1 and noise
    multiplier m / 2 (sensitivity 2C): the two agree within a few percent and both stay within
    the budget."""
    from opacus.accountants import RDPAccountant

    from securefed.protocol import parse_protocol
    from securefed.training import dpsgd

    proto = parse_protocol({
        "schema_version": 1,
        "study": {"name": "t", "mode": "simulation"},
        "privacy": {"total_epsilon": 8.0, "total_delta": 1e-5},
        "clustering": {"k": 2, "k_selection": "fixed", "k_min": 2, "k_max": 2},
        "training": {"batch_size": 2, "global_rounds": 20, "finetune_rounds": 5, "local_steps": 3,
                     "aggregation": "fedavg",
                     "dp_sgd": {"enabled": True, "epsilon": 4.0, "delta": 1e-6,
                                "max_grad_norm": 1.0, "amplification": "none"}},
    })  # fmt: skip
    plan = dpsgd.plan_dpsgd(proto)
    steps = plan.rounds * plan.steps_per_round
    opacus = RDPAccountant()
    opacus.history = [(plan.noise_multiplier / 2.0, 1.0, steps)]
    theirs = opacus.get_epsilon(delta=plan.delta)
    ours = plan.planned_epsilon()
    assert ours <= plan.epsilon + 1e-9
    assert theirs == pytest.approx(ours, rel=0.05)
    assert theirs <= plan.epsilon * 1.05


def test_poisson_dpsgd_plan_agrees_with_opacus_rdp_accountant() -> None:
    """Under add-remove-one with Poisson sampling at rate q, the plan (dp-accounting RDP over
    PoissonSampledDpEvent(q, GaussianDpEvent(m))) against Opacus' RDPAccountant with sample rate
    q and noise multiplier m (sensitivity C): they agree and the plan is within its budget."""
    from opacus.accountants import RDPAccountant

    from securefed.protocol import parse_protocol
    from securefed.training import dpsgd

    proto = parse_protocol({
        "schema_version": 1,
        "study": {"name": "t", "mode": "simulation"},
        "privacy": {"total_epsilon": 8.0, "total_delta": 1e-5, "neighbouring": "add-remove-one"},
        "clustering": {"k": 2, "k_selection": "fixed", "k_min": 2, "k_max": 2},
        "training": {"batch_size": 2, "global_rounds": 20, "finetune_rounds": 5, "local_steps": 3,
                     "aggregation": "fedavg", "baselines": ["fedavg"],
                     "dp_sgd": {"enabled": True, "epsilon": 4.0, "delta": 1e-6,
                                "max_grad_norm": 1.0, "sampling_rate": 0.25}},
    })  # fmt: skip
    plan = dpsgd.plan_dpsgd(proto)
    assert plan.sampling == "poisson"
    assert plan.sampling_rate == 0.25
    opacus = RDPAccountant()
    opacus.history = [(plan.noise_multiplier, 0.25, plan.rounds * plan.steps_per_round)]
    theirs = opacus.get_epsilon(delta=plan.delta)
    assert plan.planned_epsilon() <= plan.epsilon + 1e-9
    assert theirs == pytest.approx(plan.planned_epsilon(), rel=0.05)


def _plan(d: int, relation: str) -> SecurePlan:
    return SecurePlan("dp-kmeans", d, 3, 4, ("stats",), 1.0, 1.0, 1e-6, relation, 2, 0)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_clustering_statistics_sensitivity_by_brute_force(d: int) -> None:
    """Replace one point of a site's set (the worst cases: box corners, across clusters) and
    measure the change of the histogram counts and of the per-cluster (count, sum) vector."""
    rng = np.random.default_rng(d)
    plan = _plan(d, "replace-one")
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * d)).reshape(d, -1).T
    worst = {"histogram": 0.0, "stats": 0.0}
    for trial in range(400):
        base = rng.random((8, d))
        centroids = rng.random((3, d))
        cand = corners if trial % 2 else rng.random((16, d))
        for old in (base[0], *cand[:4]):
            for new in cand:
                a, b = base.copy(), base.copy()
                a[0], b[0] = old, new
                h = np.linalg.norm(histogram_counts(a, plan.bins) - histogram_counts(b, plan.bins))
                s = np.linalg.norm(cluster_stats(a, centroids) - cluster_stats(b, centroids))
                worst["histogram"] = max(worst["histogram"], h)
                worst["stats"] = max(worst["stats"], s)
    assert worst["histogram"] <= plan.sensitivity("histogram") + 1e-12
    assert worst["stats"] <= plan.sensitivity("stats") + 1e-12
    # The bounds are reached (not loose by construction): corner to corner across clusters.
    assert worst["histogram"] == pytest.approx(plan.sensitivity("histogram"))
    assert worst["stats"] >= 0.9 * plan.sensitivity("stats")


def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    lo = beta.ppf(alpha / 2, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(1 - alpha / 2, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def _audit(sample, shift: int, delta: float, n: int = 200_000) -> float:
    """Largest Clopper-Pearson lower bound on epsilon over 25 thresholds (each bound at 1 - 1e-6,
    so the family is wrong with probability below 1e-4), from ``n`` draws
    of the mechanism at input 0 and at its neighbour ``shift`` (grid units)."""
    y0 = sample(n)
    y1 = sample(n) + shift
    best = 0.0
    for t in np.quantile(y1, np.linspace(0.5, 0.999, 25)):
        lo1, _ = _clopper_pearson(int((y1 >= t).sum()), n, 1e-6)
        _, hi0 = _clopper_pearson(int((y0 >= t).sum()), n, 1e-6)
        if lo1 - delta > 0 and hi0 > 0:
            best = max(best, math.log((lo1 - delta) / hi0))
    return best


@pytest.mark.slow
def test_threshold_audit_of_the_discrete_release_mechanisms() -> None:
    noise = SecureNoise()
    eps = 1.0
    # Discrete Laplace at sensitivity 20 grid steps (pure epsilon-DP): the claim holds ...
    scale = laplace_scale(eps, 20.0)
    lb = _audit(lambda n: noise.discrete_laplace(scale, (n,)), 20, 0.0)
    assert 0.5 < lb <= eps, lb
    # ... and a mechanism with half the noise is caught.
    assert _audit(lambda n: noise.discrete_laplace(scale / 2, (n,)), 20, 0.0) > eps
    # Discrete Gaussian at delta 1e-5: the lower bound stays below the claim.
    sigma = discrete_gaussian_sigma(eps, 1e-5, 20.0)
    lb = _audit(lambda n: noise.discrete_gaussian(sigma, (n,)), 20, 1e-5)
    assert lb <= eps, lb
    assert _audit(lambda n: noise.discrete_gaussian(sigma / 3, (n,)), 20, 1e-5) > eps
