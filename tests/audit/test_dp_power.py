"""The audit's stated power (securefed.audit.dp_power): the exact binomial power of the threshold
test agrees with a simulation of the whole test, the largest certifiable bound is the bound with
every neighbour output passing and no base output, the default sizes catch half the noise with
95 % probability at each shipped claim the threshold test audits, and the one-run audit's score
model predicts a real canary run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from securefed.audit import dp as dp_module
from securefed.audit import dp_power
from securefed.audit.dp import epsilon_lower_bound
from securefed.audit.one_run import (
    guesses_for,
    one_run_max_certifiable,
    run_one_run_audit,
    schedule,
)
from securefed.protocol import load_protocol
from securefed.protocol.shipped import shipped_protocol
from securefed.training.dpsgd import plan_dpsgd


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_the_exact_power_agrees_with_a_simulation_of_the_test(family: str) -> None:
    # A seeded simulation of the audit's test on the family's continuous noise at half the claimed
    # scale: 400 runs of 20,000 outputs per input, the pre-registered threshold. The exact power
    # and the simulated rate agree within 4 binomial standard errors (fails with p < 1e-4).
    shift, claim, delta, n = (0.28, 1.0, 1e-5, 20_000) if family == "gaussian" else (
        0.35, 0.55, 0.0, 3000)  # fmt: skip
    t, power = dp_power.best_threshold(family, shift, n, claim, delta, 0.999)
    assert 0.2 < power < 0.9  # a setting where the agreement means something
    rng = np.random.default_rng(1)
    draw = rng.standard_normal if family == "gaussian" else rng.laplace
    hits = 0
    reps = 400
    for _ in range(reps):
        y0, y1 = 0.5 * draw(size=n), shift + 0.5 * draw(size=n)
        hits += epsilon_lower_bound(y0, y1, t, delta, 0.999)["lower_bound"] > claim
    se = math.sqrt(power * (1 - power) / reps)
    assert abs(hits / reps - power) < 4 * se, (hits / reps, power)


def test_max_certifiable_is_the_bound_with_every_output_on_the_right_side() -> None:
    for n, delta, conf in [(2000, 0.0, 0.999), (150_000, 1e-6, 0.999), (20_000, 1e-5, 0.95)]:
        y0, y1 = np.zeros(n), np.ones(n)
        bound = epsilon_lower_bound(y0, y1, 0.5, delta, conf)["lower_bound"]
        assert dp_power.threshold_max_certifiable(n, delta, conf) == pytest.approx(bound, rel=1e-9)
        # No test of this size certifies more: the rates cannot be more extreme.
        t, _ = dp_power.best_threshold("gaussian", 50.0, n, 1.0, delta, conf)
        fpr, tpr = dp_power.threshold_rates("gaussian", 50.0, t, 1.0)
        assert dp_power.threshold_power(fpr, tpr, n, bound + 1e-6, delta, conf) == 0.0


@pytest.mark.parametrize(
    ("protocol", "build"),
    [
        ("demo-local-dp", lambda lp: dp_module.feature_release(lp)),
        ("demo-secure-aggregate", lambda lp: dp_module.clustering_shares(lp)),
        ("demo-clientdp", lambda lp: dp_module.client_dp(lp, dim=4096)),
    ],
)
def test_the_default_size_catches_half_the_noise_at_each_shipped_claim(protocol, build) -> None:
    # Feature release epsilon 4, secure clustering 1, client DP 8 (delta 1e-6 each): the sized
    # run's exact power against half the noise is >= 95 %, within the cost cap, and the run can
    # certify well above the claim.
    mech = build(load_protocol(shipped_protocol(protocol)))
    sized = dp_module._trials_for(mech, dp_module.CONFIDENCE)
    assert sized.target_reached and sized.power >= 0.95, sized
    assert sized.trials * mech.draws_per_trial * 2 <= dp_module.MAX_DRAWS
    assert dp_power.threshold_max_certifiable(sized.trials, mech.delta, 0.999) > 1.2 * (
        mech.claimed_epsilon)  # fmt: skip
    # Half the trials fall short of the target: the size is not padded.
    _, half = dp_power.best_threshold(mech.family, mech.shift, sized.trials // 2,
                                      mech.claimed_epsilon, mech.delta, 0.999)  # fmt: skip
    assert half < dp_power.SIZING_POWER


@pytest.mark.slow  # simulations of 100,000 and 200,000 canaries (15 s)
def test_the_one_run_audit_cannot_catch_half_the_noise_at_the_dpsgd_claim() -> None:
    # DP-SGD at epsilon 8 (demo-dpsgd): no affordable one-run size catches half the noise (a
    # threshold test would need about e^8 / 0.006 outputs), a quarter is caught at 100,000
    # canaries; the noise check is what catches half (tests/audit/test_dp_audit.py).
    plan = plan_dpsgd(load_protocol(shipped_protocol("demo-dpsgd")).protocol)
    model = dp_power.CanaryModel(((40, 1 / 3), (40, 1.0)), plan.noise_multiplier, "replace-one")
    assert [(s, h) for s, _, h in schedule(plan)] == [(40, "without-replacement"), (40, "all")]
    most = dp_module.MAX_CANARIES["float"]
    assert dp_power.one_run_power(model, most, 8.0, 1e-6) < 0.01
    assert dp_power.one_run_power(model, 100_000, 8.0, 1e-6, scale=0.25) > 0.95
    # The default size: the fewest canaries on the ladder whose best case certifies above 8.
    assert one_run_max_certifiable(50_000, 1e-6) < 8.0 < one_run_max_certifiable(100_002, 1e-6)


@pytest.mark.slow  # one real canary run of the demo-dpsgd plan (10 s)
def test_the_canary_model_predicts_a_real_run() -> None:
    # The correct guesses of a real run (site samplers, Opacus, half the noise) fall inside the
    # simulated distribution of the score model the power estimates use (6 standard deviations).
    plan = plan_dpsgd(load_protocol(shipped_protocol("demo-dpsgd")).protocol)
    model = dp_power.CanaryModel(((40, 1 / 3), (40, 1.0)), plan.noise_multiplier, "replace-one")
    res = run_one_run_audit(plan, relation="replace-one", canaries=3000, noise_scale=0.5)
    rng = np.random.default_rng(3)
    k = guesses_for(3000) // 2
    vs = []
    for _ in range(200):
        inc = rng.random(3000) < 0.5
        score = model.scores(inc, rng, 0.5)
        order = np.argsort(score)
        vs.append(int(inc[order[-k:]].sum() + (~inc[order[:k]]).sum()))
    assert abs(res["correct"] - np.mean(vs)) < 6 * np.std(vs), (res["correct"], np.mean(vs))
