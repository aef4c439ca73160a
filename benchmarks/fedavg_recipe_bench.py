"""In-process FedAvg(M) recipe benchmark on a synthetic federation (no Flower, no SecAgg+).

Each round: every site starts from the global weights, runs ``--steps`` local optimiser steps
(train_local, the site code the Flower client runs), the server averages the weights (weights =
train case counts) and applies server momentum (FedAvgM: ``v = m v + (w - avg)``,
``w' = w - server_lr v``; momentum 0 = plain FedAvg). Every ``--eval-every`` rounds: pooled
validation and test Dice (TC/WT/ET, sliding window, no HD95). Sites run one after the other, so
``train`` seconds are the CPU cost of a round. Not private: a recipe benchmark only.

Usage:
  .venv/bin/python benchmarks/fedavg_recipe_bench.py --data DIR [--protocol protocols/demo.toml]
      [--spacing 3] [--crop 32] [--roi 64,80,64] [--rounds 16] [--steps 16] [--lr 3e-3]
      [--momentum 0.9] [--tc 0.25] [--loss dice-bce] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvgM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from securefed.data import load_federation
from securefed.models import build_model
from securefed.protocol import load_protocol
from securefed.training.local import (
    evaluate_local,
    get_weights,
    prepare_cases,
    set_weights,
    train_local,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--protocol", type=Path, default=Path("protocols/demo.toml"))
    ap.add_argument("--spacing", type=float, default=None)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--roi", default=None, help="x,y,z")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--server-lr", type=float, default=1.0)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--tc", type=float, default=None, help="tumour_crop_fraction")
    ap.add_argument("--loss", default=None, choices=["dice", "dice-bce"])
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    proto = load_protocol(a.protocol).protocol
    update: dict[str, object] = {}
    for key, value in (("spacing_mm", a.spacing), ("lr", a.lr), ("tumour_crop_fraction", a.tc),
                       ("loss", a.loss)):  # fmt: skip
        if value is not None:
            update[key] = value
    if a.crop:
        update["crop_size"] = (a.crop,) * 3
    spec = proto.training.model_copy(update=update)
    ev_update: dict[str, object] = {"hd95": False}
    if a.roi:
        ev_update["roi_size"] = tuple(int(v) for v in a.roi.split(","))
    ev = proto.evaluation.model_copy(update=ev_update)
    shown = {"spacing_mm", "crop_size", "lr", "loss", "optimizer", "tumour_crop_fraction"}
    print(f"recipe: {spec.model_dump(include=shown)} rounds {a.rounds} x {a.steps} steps, "
          f"server lr {a.server_lr} momentum {a.momentum}", flush=True)  # fmt: skip
    fed = load_federation(a.data, proto.data.partitioning)
    splits = fed.splits(proto.data.split_seed, proto.data.test_fraction, proto.data.val_fraction)
    t0 = time.time()
    sites = {
        pid: {
            s: prepare_cases([fed.cases[c] for c in subs if splits[c] == s], spec)
            for s in ("train", "val", "test")
        }
        for pid, subs in fed.partitions.items()
    }
    print(f"prepared in {time.time() - t0:.1f} s", flush=True)
    model = build_model(spec)
    w = [x.astype(np.float64) for x in get_weights(model)]
    # The server step is Flower's FedAvgM, as in securefed's ServerApp (PhaseStrategy).
    server = FedAvgM(server_learning_rate=a.server_lr, server_momentum=a.momentum)
    val = [c for p in sorted(sites) for c in sites[p]["val"]]
    test = [c for p in sorted(sites) for c in sites[p]["test"]]
    train_s = eval_s = 0.0
    for r in range(1, a.rounds + 1):
        t1 = time.time()
        acc = [np.zeros_like(x) for x in w]
        n = 0
        for pid in sorted(sites):
            tr = sites[pid]["train"]
            if not tr:
                continue
            set_weights(model, [x.astype(np.float32) for x in w])
            train_local(model, tr, spec, epochs=100, max_steps=a.steps, lr=spec.lr,
                        seed=r * 100 + pid)  # fmt: skip
            for i, x in enumerate(get_weights(model)):
                acc[i] += len(tr) * x
            n += len(tr)
        server.initial_parameters = ndarrays_to_parameters([x.astype(np.float32) for x in w])
        average = ndarrays_to_parameters([(total / n).astype(np.float32) for total in acc])
        stepped, _ = server.aggregate_fit(
            r, [(None, FitRes(Status(Code.OK, ""), average, n, {}))], []
        )
        w = parameters_to_ndarrays(stepped)
        train_s += time.time() - t1
        if r % a.eval_every == 0 or r == a.rounds:
            t2 = time.time()
            set_weights(model, [x.astype(np.float32) for x in w])
            mv = evaluate_local(model, val, ev)["means"]
            mt = evaluate_local(model, test, ev)["means"]
            eval_s += time.time() - t2
            dice = "/".join(f"{mv[f'dice_{k}']:.2f}" for k in ("tc", "wt", "et"))
            dice_t = "/".join(f"{mt[f'dice_{k}']:.2f}" for k in ("tc", "wt", "et"))
            print(f"round {r}: train {train_s:.0f} s, eval {eval_s:.0f} s; Dice TC/WT/ET val "
                  f"{dice} test {dice_t}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
