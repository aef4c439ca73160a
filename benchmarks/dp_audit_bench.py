"""The power and size of `securefed audit dp` at each shipped claim (benchmarks/results/audit.md).

    .venv/bin/python benchmarks/dp_audit_bench.py [--real N] [--simulate N]

For every DP stage of the shipped protocols (the claims `audit dp RUNDIR` audits) and the default
claims (`audit dp --out`, epsilon 1, delta 1e-5):

1. the default size (outputs per input, or canaries) and its cost in sampler draws, the largest
   bound it can certify, and its power against half the noise (exact binomial sums for the
   threshold test, the simulated score model for the one-run audit), with the quick mode's;
2. ``--simulate N``: the exact power checked against N seeded simulations of the whole threshold
   test on continuous noise of the same law (the discrete samplers at thousands of grid units);
3. ``--real N``: N real audits of each threshold mechanism at half the noise (OpenDP, the site's
   code path) at the default size, and how many caught it (bound above the claim), with their CPU
   seconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from securefed.audit import dp, dp_power
from securefed.audit.one_run import one_run_max_certifiable, schedule
from securefed.protocol import load_protocol
from securefed.protocol.shipped import shipped_protocol
from securefed.training.dpsgd import plan_dpsgd

SHIPPED = [
    ("demo-local-dp", "feature-gaussian"),
    ("demo-secure-aggregate", "clustering-shares"),
    ("demo-dpsgd", "dp-sgd"),
    ("demo-clientdp", "client-dp"),
]


def _threshold_row(where: str, mech: dp.MechanismAudit) -> dict:
    sized = dp._trials_for(mech, dp.CONFIDENCE)
    _, quick_power = dp_power.best_threshold(
        mech.family, mech.shift, dp.QUICK_TRIALS, mech.claimed_epsilon, mech.delta, dp.CONFIDENCE
    )
    return {
        "where": where, "mechanism": mech.name, "claim": mech.claimed_epsilon,
        "delta": mech.delta, "shift": mech.shift, "size": sized.trials,
        "draws": 2 * sized.trials * mech.draws_per_trial,
        "max_cert": dp_power.threshold_max_certifiable(sized.trials, mech.delta, dp.CONFIDENCE),
        "power": sized.power, "threshold": sized.threshold, "family": mech.family,
        "quick_max_cert": dp_power.threshold_max_certifiable(dp.QUICK_TRIALS, mech.delta,
                                                             dp.CONFIDENCE),
        "quick_power": quick_power, "mech": mech,
    }  # fmt: skip


def _one_run_row(where: str, loaded, name: str) -> dict:
    plan = plan_dpsgd(loaded.protocol)
    rates = {"all": 1.0, "poisson": plan.sampling_rate}
    model = dp_power.CanaryModel(
        tuple((s, rates.get(h, plan.batch_size / sl)) for s, sl, h in schedule(plan)),
        plan.noise_multiplier, loaded.protocol.privacy.neighbouring,
    )  # fmt: skip
    size, power = dp_power.size_one_run(model, plan.epsilon, plan.delta,
                                        most=dp.MAX_CANARIES[plan.noise])  # fmt: skip
    quick = dp.QUICK_CANARIES[plan.noise]
    return {
        "where": where, "mechanism": name, "claim": plan.epsilon, "delta": plan.delta,
        "size": size, "draws": size * model.steps, "max_cert": one_run_max_certifiable(size,
                                                                                       plan.delta),
        "power": power, "power_quarter": dp_power.one_run_power(model, size, plan.epsilon,
                                                                plan.delta, scale=0.25),
        "quick_max_cert": one_run_max_certifiable(quick, plan.delta),
        "quick_power": dp_power.one_run_power(model, quick, plan.epsilon, plan.delta),
    }  # fmt: skip


def _simulate(row: dict, reps: int) -> float:
    rng = np.random.default_rng(7)
    draw = rng.standard_normal if row["family"] == "gaussian" else rng.laplace
    hits = 0
    for _ in range(reps):
        y0 = 0.5 * draw(size=row["size"])
        y1 = row["shift"] + 0.5 * draw(size=row["size"])
        test = dp.epsilon_lower_bound(y0, y1, row["threshold"], row["delta"], dp.CONFIDENCE)
        hits += test["lower_bound"] > row["claim"]
    return hits / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--simulate", type=int, default=0)
    ap.add_argument("--real", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for proto, name in SHIPPED:
        loaded = load_protocol(shipped_protocol(proto))
        if name in dp.ONE_RUN:
            rows.append(_one_run_row(proto, loaded, name))
        elif name == "client-dp":
            rows.append(_threshold_row(proto, dp.client_dp(loaded)))
        else:
            rows.append(_threshold_row(proto, dp._build(name, loaded, 1.0, 1.0)))
    for name in dp.DEFAULT_MECHANISMS:
        loaded = dp.claim_protocol(name, 1.0, 1e-5)
        if name in dp.ONE_RUN:
            rows.append(_one_run_row("--epsilon 1", loaded, name))
        else:
            rows.append(_threshold_row("--epsilon 1", dp._build(name, loaded, 1.0, 1.0)))
    print(
        "| claim (where) | mechanism | default size | sampler draws | max certifiable | power "
        "vs half the noise | quick: max certifiable, power |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        extra = f" (a quarter: {r['power_quarter']:.2f})" if "power_quarter" in r else ""
        print(f"| {r['claim']:g}, {r['delta']:g} ({r['where']}) | {r['mechanism']} | {r['size']:,} "
              f"| {r['draws']:,} | {r['max_cert']:.2f} | {r['power']:.3f}{extra} | "
              f"{r['quick_max_cert']:.2f}, {r['quick_power']:.3f} |")  # fmt: skip
    if args.simulate:
        print(f"\nexact power vs {args.simulate} simulated tests (continuous noise, seeded):")
        for r in rows:
            if "family" in r:
                print(f"  {r['where']} {r['mechanism']}: exact {r['power']:.3f}, simulated "
                      f"{_simulate(r, args.simulate):.3f}")  # fmt: skip
    if args.real:
        print(f"\n{args.real} real audits at half the noise, default size:")
        for r in rows:
            if "mech" not in r:
                continue
            mech = r["mech"]
            loaded = (load_protocol(shipped_protocol(r["where"])) if r["where"] != "--epsilon 1"
                      else dp.claim_protocol(mech.name, 1.0, 1e-5))  # fmt: skip
            half = (dp.client_dp(loaded, 0.5) if mech.name == "client-dp"
                    else dp._build(mech.name, loaded, 1.0, 0.5))  # fmt: skip
            caught, cpu, bounds = 0, [], []
            for _ in range(args.real):
                c0 = time.process_time()
                row = dp.audit_mechanism(half, r["size"], threshold=r["threshold"])
                cpu.append(time.process_time() - c0)
                bounds.append(row["lower_bound"])
                caught += row["lower_bound"] > r["claim"]
            print(f"  {r['where']} {mech.name}: caught {caught}/{args.real}, bounds "
                  f"{', '.join(f'{b:.2f}' for b in bounds)} (claim {r['claim']:g}), "
                  f"{np.mean(cpu):.1f} CPU s per audit")  # fmt: skip


if __name__ == "__main__":
    main()
