"""The DP-SGD recipe for hospital-sized sites (issue 32, part 3): from public values only.

For a protocol's schedule (global rounds x local steps, finetuning rounds per cluster, k) and
each candidate (population N of public patient slots, batch size B, epsilon per patient), the
calibrated noise multiplier m (securefed.training.dpsgd.plan_dpsgd: the site's own plan, the
cluster weights' noise included under secure-aggregate CFFL) and the standard deviation of the
noise on each step's averaged gradient relative to the clipping norm, m / B (times 2 under
replace-one's 2C sensitivity is already inside m). A larger B lowers m / B at a fixed epsilon,
until the sampling rate B / N stops amplifying; N should bound the largest site's train
patients (a larger site is charged as N, a smaller one pads). Nothing here reads patient data:
the recipe is a function of the protocol, like the plan itself.

Usage:
  .venv/bin/python benchmarks/dpsgd_recipe.py PROTOCOL [--population 400] [--batch 8,16,32,64]
      [--epsilon 8,4] [--out recipe.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from securefed.protocol import parse_protocol
from securefed.training.dpsgd import plan_dpsgd


def _csv(kind: type, text: str) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("protocol", type=Path)
    ap.add_argument("--population", type=int, default=400)
    ap.add_argument("--batch", type=lambda t: _csv(int, t), default=[8, 16, 32, 64])
    ap.add_argument("--epsilon", type=lambda t: _csv(float, t), default=[8.0, 4.0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    base = tomllib.loads(args.protocol.read_text())
    rows = []
    for eps in args.epsilon:
        for batch in args.batch:
            doc = {**base, "training": {**base["training"], "batch_size": batch}}
            dp = {**doc["training"].get("dp_sgd", {}), "enabled": True, "epsilon": eps,
                  "amplification": "sampling", "population": args.population}  # fmt: skip
            doc["training"]["dp_sgd"] = dp
            doc["privacy"] = {**doc["privacy"], "total_epsilon": max(
                float(doc["privacy"].get("total_epsilon", 0)), eps + 2.0)}  # fmt: skip
            t0 = time.perf_counter()
            plan = plan_dpsgd(parse_protocol(doc))
            row = {
                "epsilon": eps, "population": args.population, "batch_size": batch,
                "rounds": plan.rounds, "steps_per_round": plan.steps_per_round,
                "noise_multiplier": round(plan.noise_multiplier, 4),
                "noise_over_clip_per_step": round(plan.noise_multiplier / batch, 4),
                "weight_noise": plan.weight_noise,
                "planned_epsilon": round(plan.planned_epsilon(), 4),
                "calibration_s": round(time.perf_counter() - t0, 1),
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
