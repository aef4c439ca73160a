"""Training benchmark: learning speed of the segmentation recipes on a synthetic federation.

Measures (1) the time of one training step (batch, crop from the protocol) and of sliding-window
evaluation per case on the chosen device, (2) pooled learning curves (test Dice TC/WT/ET after N
optimiser steps) for a few recipes, (3) an in-process FedAvg simulation with the protocol's
rounds/local steps (plain weighted averaging, no Flower, no SecAgg+: the same arithmetic as the
Flower FedAvg up to SecAgg+ quantisation). Pooled training is NOT private: benchmark only.

Usage:
  .venv/bin/python benchmarks/training_bench.py --data DIR [--protocol protocols/demo.toml]
      [--device auto] [--timing-steps 20] [--recipes demo,paper] [--pooled-steps 600]
      [--eval-every 100] [--fedavg 8x1x12,8x6x12] [--out results.json]
``--fedavg RxExS``: R rounds, E local epochs, at most S local steps per round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from securefed.data import load_federation
from securefed.models import build_model
from securefed.protocol import load_protocol
from securefed.training.local import (
    evaluate_local,
    get_weights,
    prepare_cases,
    resolve_device,
    set_weights,
    train_local,
)

RECIPES: dict[str, dict[str, Any]] = {
    "demo": {},
    "demo-lr1e-3": {"lr": 0.001},
    "demo-lr1e-2": {"lr": 0.01},
    "demo-random-crops": {"crop_sampling": "random"},
    "demo-tc0.5": {"tumour_crop_fraction": 0.5},
    "paper-sgd": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "crop_sampling": "random"},
    "sgd-tc": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0},
}


def log(msg: str) -> None:
    print(msg, flush=True)


def load(data: Path, protocol_path: Path) -> tuple[Any, dict[int, dict[str, list[dict]]]]:
    proto = load_protocol(protocol_path).protocol
    fed = load_federation(data, proto.data.partitioning)
    splits = fed.splits(proto.data.split_seed, proto.data.test_fraction, proto.data.val_fraction)
    t0 = time.perf_counter()
    sites: dict[int, dict[str, list[dict]]] = {}
    for pid, subjects in fed.partitions.items():
        by = {
            s: [fed.cases[c] for c in subjects if splits[c] == s] for s in ("train", "val", "test")
        }
        sites[pid] = {s: prepare_cases(cases, proto.training) for s, cases in by.items()}
    n = {s: sum(len(v[s]) for v in sites.values()) for s in ("train", "val", "test")}
    log(f"prepared {n} cases of {len(sites)} sites in {time.perf_counter() - t0:.1f} s")
    return proto, sites


def pooled(sites: dict, split: str) -> list[dict]:
    return [c for pid in sorted(sites) for c in sites[pid][split]]


def timing(proto: Any, sites: dict, device: torch.device, steps: int) -> dict[str, float]:
    spec = proto.training
    train = pooled(sites, "train")
    model = build_model(spec)
    train_local(model, train, spec, epochs=10, max_steps=2, lr=spec.lr, device=device, seed=99)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_local(model, train, spec, epochs=1000, max_steps=steps, lr=spec.lr, device=device, seed=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / steps
    test = pooled(sites, "test")[:3]
    ev = proto.evaluation
    t0 = time.perf_counter()
    evaluate_local(model, test, ev.model_copy(update={"hd95": False}), device)
    eval_s = (time.perf_counter() - t0) / len(test)
    t0 = time.perf_counter()
    evaluate_local(model, test, ev, device)
    eval_hd_s = (time.perf_counter() - t0) / len(test)
    out = {
        "step_s": step_s,
        "steps_per_s": 1 / step_s,
        "eval_s_per_case": eval_s,
        "eval_hd95_s_per_case": eval_hd_s,
        "threads": torch.get_num_threads(),
    }
    log(f"timing on {device}: {json.dumps(out)}")
    return out


def curve(proto: Any, sites: dict, name: str, device: torch.device, steps: int, every: int) -> dict:
    spec = proto.training.model_copy(update=RECIPES[name])
    ev = proto.evaluation.model_copy(update={"hd95": False})
    train, test = pooled(sites, "train"), pooled(sites, "test")
    model = build_model(spec)
    points = []
    done = 0
    t0 = time.perf_counter()
    while done < steps:
        out = train_local(model, train, spec, epochs=1000, max_steps=every, lr=spec.lr,
                          device=device, seed=spec.seed + done)  # fmt: skip
        done += out["steps"]
        means = evaluate_local(model, test, ev, device)["means"]
        point = {"step": done, "loss": out["loss"], "seconds": time.perf_counter() - t0}
        point.update({k: means[k] for k in ("dice_tc", "dice_wt", "dice_et", "dice_mean")})
        points.append(point)
        log(f"  {name} step {done}: " + " ".join(f"{k}={v:.3f}" for k, v in point.items()))
    return {"recipe": name, "overrides": RECIPES[name], "points": points}


def fedavg(proto: Any, sites: dict, plan: str, device: torch.device) -> dict:
    rounds, epochs, local_steps = (int(x) for x in plan.split("x"))
    spec = proto.training
    ev = proto.evaluation.model_copy(update={"hd95": False})
    model = build_model(spec)
    weights = get_weights(model)
    test = pooled(sites, "test")
    points = []
    t0 = time.perf_counter()
    total_steps = 0
    for r in range(1, rounds + 1):
        updates, counts = [], []
        for pid in sorted(sites):
            set_weights(model, weights)
            out = train_local(model, sites[pid]["train"], spec, epochs=epochs,
                              max_steps=local_steps, lr=spec.lr, device=device,
                              seed=spec.seed + 1000 * r + pid)  # fmt: skip
            total_steps += out["steps"]
            updates.append(get_weights(model))
            counts.append(out["num_examples"])
        w = np.asarray(counts, dtype=np.float64) / sum(counts)
        weights = [sum(wi * u[j] for wi, u in zip(w, updates, strict=True)).astype(np.float32)
                   for j in range(len(weights))]  # fmt: skip
        set_weights(model, weights)
        means = evaluate_local(model, test, ev, device)["means"]
        point = {"round": r, "site_steps": total_steps, "seconds": time.perf_counter() - t0}
        point.update({k: means[k] for k in ("dice_tc", "dice_wt", "dice_et", "dice_mean")})
        points.append(point)
        log(f"  fedavg {plan} round {r}: " + " ".join(f"{k}={v:.3f}" for k, v in point.items()))
    final = evaluate_local(model, test, proto.evaluation, device)["means"]
    return {"plan": plan, "points": points, "final": final}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--protocol", type=Path, default=Path("protocols/demo.toml"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--timing-steps", type=int, default=20)
    ap.add_argument("--recipes", default="")
    ap.add_argument("--pooled-steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--fedavg", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    proto, sites = load(args.data, args.protocol)
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "torch": torch.__version__,
        },  # fmt: skip
        "protocol": str(args.protocol),
        "cases": {s: len(pooled(sites, s)) for s in ("train", "val", "test")},
        "sites": {str(p): {s: len(v[s]) for s in v} for p, v in sites.items()},
    }
    if args.timing_steps:
        result["timing"] = timing(proto, sites, device, args.timing_steps)
    result["curves"] = [
        curve(proto, sites, n, device, args.pooled_steps, args.eval_every)
        for n in filter(None, args.recipes.split(","))
    ]
    result["fedavg"] = [
        fedavg(proto, sites, p, device) for p in filter(None, args.fedavg.split(","))
    ]
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=float))
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
