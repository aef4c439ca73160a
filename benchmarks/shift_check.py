"""Does the scanner shift of a federation hurt segmentation? (issue 32: "show before using it")

Trains one model (pooled, NOT private: a benchmark of the data, not of a method) on train cases of
the federation's STANDARD acquisitions only (scanners without a contrast override), then scores
every test case of every scanner group with it. A shifted group whose test Dice falls clearly
below the standard group's (bootstrap interval of the difference excluding 0) is a shift that
hurts: there CFFL has something to win. Groups and splits come from truth.csv and the protocol's
split rule (the study's test cases).

Usage:
  .venv/bin/python benchmarks/shift_check.py --data DIR [--protocol protocols/demo.toml]
      [--spacing 4] [--train-cases 160] [--steps 800] [--out shift.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from securefed.data import load_federation
from securefed.data.synth import SCANNERS
from securefed.evaluation import mean_metrics
from securefed.models import build_model
from securefed.protocol import load_protocol
from securefed.stats import bootstrap_interval
from securefed.training.local import evaluate_local, prepare_cases, train_local


def log(msg: str) -> None:
    print(msg, flush=True)


def scanners_of(data: Path) -> dict[str, str]:
    with open(data / "truth.csv", newline="") as fh:
        return {row["subject_id"]: row["scanner"] for row in csv.DictReader(fh)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--protocol", type=Path, default=Path("protocols/demo.toml"))
    ap.add_argument("--spacing", type=float, default=None, help="training.spacing_mm override")
    ap.add_argument("--train-cases", type=int, default=160)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--test-per-group", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    proto = load_protocol(args.protocol).protocol
    spec = proto.training
    if args.spacing:
        spec = spec.model_copy(update={"spacing_mm": float(args.spacing)})
    ev = proto.evaluation.model_copy(update={"hd95": False})
    fed = load_federation(args.data, proto.data.partitioning)
    splits = fed.splits(proto.data.split_seed, proto.data.test_fraction, proto.data.val_fraction)
    scanner = scanners_of(args.data)
    group_of = {s: ("standard" if not SCANNERS[sc].contrast else sc) for s, sc in scanner.items()}
    rng = np.random.default_rng(0)
    standard_train = sorted(s for s in fed.cases if splits[s] == "train" and
                            group_of[s] == "standard")  # fmt: skip
    chosen = sorted(rng.choice(standard_train, min(args.train_cases, len(standard_train)),
                               replace=False))  # fmt: skip
    tests: dict[str, list[str]] = {}
    for s in sorted(fed.cases):
        if splits[s] == "test":
            tests.setdefault(group_of[s], []).append(s)
    for g, subjects in tests.items():  # a capped, seeded subset per group (evaluation time)
        if len(subjects) > args.test_per_group:
            tests[g] = sorted(rng.choice(subjects, args.test_per_group, replace=False))
    log(f"train {len(chosen)} standard cases; test per group "
        f"{ {g: len(v) for g, v in tests.items()} }")  # fmt: skip
    train = prepare_cases([fed.cases[s] for s in chosen], spec)
    model = build_model(spec)
    t1 = time.perf_counter()
    out = train_local(model, train, spec, epochs=10_000, max_steps=args.steps, lr=spec.lr,
                      seed=spec.seed)  # fmt: skip
    train_s = time.perf_counter() - t1
    log(f"trained {out['steps']} steps in {train_s:.0f} s (loss {out['loss']:.3f})")
    rows: dict[str, list[float]] = {}
    means: dict[str, dict[str, float]] = {}
    for g, subjects in sorted(tests.items()):
        cases = prepare_cases([fed.cases[s] for s in subjects], spec)
        result = evaluate_local(model, cases, ev)
        rows[g] = [float(r["dice_mean"]) for r in result["cases"]]
        means[g] = {k: float(v) for k, v in mean_metrics(result["cases"]).items()
                    if k.startswith("dice")}  # fmt: skip
    base = np.asarray(rows["standard"])
    groups: dict[str, Any] = {}
    for g, values in rows.items():
        v = np.asarray(values)
        entry: dict[str, Any] = {
            "n_test": len(v),
            "dice_mean": float(v.mean()),
            "ci": bootstrap_interval(np.mean, [v]),
            **{k: means[g][k] for k in ("dice_tc", "dice_wt", "dice_et") if k in means[g]},
        }
        if g != "standard":
            diff = bootstrap_interval(lambda a, b: np.mean(a) - np.mean(b), [base, v])
            entry["loss_vs_standard"] = float(base.mean() - v.mean())
            entry["loss_ci"] = diff
            entry["hurts"] = bool(diff[0] > 0)
        groups[g] = entry
        log(f"{g:32s} n={len(v):3d} Dice {v.mean():.3f} [{entry['ci'][0]:.3f}, "
            f"{entry['ci'][1]:.3f}]" + (f"  loss {entry['loss_vs_standard']:+.3f} "
                                        f"[{entry['loss_ci'][0]:+.3f}, {entry['loss_ci'][1]:+.3f}]"
                                        if g != "standard" else ""))  # fmt: skip
    result_doc = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "train_cases": len(chosen),
        "steps": int(out["steps"]),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "groups": groups,
    }
    if args.out:
        args.out.write_text(json.dumps(result_doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
