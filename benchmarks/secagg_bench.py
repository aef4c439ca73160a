"""SecAgg+ round time against plain FedAvg, with the paper's model (small DynUNet, ~1.4 M
parameters), in Flower's simulation engine, at 5, 10 and 23 clients (FeTS2022's institutions).

By default sites do no real training (the update is the global model plus a small seeded
offset), so the measured round is pure orchestration + aggregation: the relative SecAgg+ overhead
is the worst case; the absolute extra seconds per round are what a real round pays on top of its
training. ``--train-steps N`` makes every site run N real Adam steps of the model (batch 2,
``--crop``^3 random inputs, Dice loss) per round: the demo recipe's compute without its data. The
simulation engine runs the sites two at a time on this machine, so a round's training time grows
with the number of clients (in a deployment sites train in parallel).

    .venv/bin/python benchmarks/secagg_bench.py --clients 5 10 23 --rounds 3 --out benchmarks/_work
    .venv/bin/python benchmarks/secagg_bench.py --clients 5 10 23 --rounds 3 --train-steps 24
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.federation.task import FlowerTask
from securefed.protocol import load_protocol

PROTOCOL = """schema_version = 1
[study]
name = "secagg-bench"
mode = "simulation"
[privacy]
total_epsilon = 1.0
[training]
global_rounds = {rounds}
aggregation = "{aggregation}"
min_sites_per_aggregate = 2
[secure_aggregation]
num_shares = {shares}
reconstruction_threshold = {threshold}
timeout_s = 300
"""


def _build(spec):
    from securefed.models import build_model

    return build_model(spec)


def _load(data_dir, partition_id, subject_ids, spec):
    return [{"pid": partition_id} for _ in subject_ids]


def _train(model, data, spec, *, epochs, max_steps, lr, device, seed, steps=0, crop=24):
    import torch

    gen = torch.Generator().manual_seed(seed)
    if steps <= 0:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 1e-3)
        return {"num_examples": len(data), "loss": 0.0}
    from securefed.training.local import make_loss

    model.train()
    loss_fn = make_loss(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = torch.zeros(())
    for _ in range(steps):
        x = torch.randn(2, 4, crop, crop, crop, generator=gen)
        y = (torch.rand(2, 3, crop, crop, crop, generator=gen) > 0.9).float()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return {"num_examples": len(data), "loss": float(loss.detach())}


def _evaluate(model, data, eval_spec, device):
    return {"cases": []}


def _get(model):
    # Unique parameters only: MONAI's DynUNet state_dict lists shared submodules twice (2.8 M
    # values for 1.4 M parameters); the paper's model size is what is benchmarked here.
    return [p.detach().cpu().numpy().copy() for p in model.parameters()]


def _set(model, weights):
    import torch

    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(torch.from_numpy(w))


def bench_task(steps: int = 0, crop: int = 24) -> FlowerTask:
    return FlowerTask(_build, _load, partial(_train, steps=steps, crop=crop), _evaluate, _get, _set)


def run_one(
    work: Path, n: int, aggregation: str, rounds: int, steps: int = 0, crop: int = 24
) -> dict:
    shutil.rmtree(work, ignore_errors=True)  # a leftover checkpoint would be resumed, not re-timed
    work.mkdir(parents=True)
    shares = n if n % 2 == 1 else n - 1  # Flower wants an odd number of shares
    shares = max(3, min(shares, 7))
    proto = work / "protocol.toml"
    proto.write_text(PROTOCOL.format(rounds=rounds, aggregation=aggregation, shares=shares,
                                     threshold=max(2, shares // 2 + 1)))  # fmt: skip
    loaded = load_protocol(proto)
    counts = {p: 2 + (p % 5) for p in range(1, n + 1)}
    lines = ["subject_id,partition_id,split,cluster"]
    for p, k in counts.items():
        lines += [f"S{p}_{i},{p},train,0" for i in range(k)] + [f"S{p}_v,{p},val,0"]
    (work / "clusters.csv").write_text("\n".join(lines) + "\n")
    sites = [SiteSettings(partition_id=p, data_dir=str(work), protocol=str(proto),
                          assignments=str(work / "clusters.csv"))
             for p in counts]  # fmt: skip
    cfg = phase_config(loaded, out_dir=work / "phase", sites=counts,
                       assignments=work / "clusters.csv")  # fmt: skip
    t0 = time.perf_counter()
    result = run_phase(cfg, sites, task=bench_task(steps, crop))
    wall = time.perf_counter() - t0
    per_round = [h["seconds"] for h in result.history if h["round"] >= 1]
    return {
        "clients": n, "aggregation": aggregation, "num_shares": shares, "rounds": rounds,
        "round_s": per_round, "median_round_s": statistics.median(per_round[1:] or per_round),
        "wall_s": wall,
        "weights": [w.astype(np.float64) for w in result.best_weights],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[5, 10, 23])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/_work/secagg"))
    parser.add_argument("--train-steps", type=int, default=0, help="real local steps per round")
    parser.add_argument("--crop", type=int, default=24, help="crop edge of --train-steps inputs")
    args = parser.parse_args()
    rows = []
    extra = (args.train_steps, args.crop)
    for n in args.clients:
        plain = run_one(args.out / f"n{n}-fedavg", n, "fedavg", args.rounds, *extra)
        sec = run_one(args.out / f"n{n}-secagg", n, "secagg+", args.rounds, *extra)
        diff = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(plain.pop("weights"), sec.pop("weights"), strict=True)
        )
        # fmt: skip
        overhead = sec["median_round_s"] / plain["median_round_s"] - 1
        row = {
            "clients": n,
            "fedavg": plain,
            "secagg": sec,
            "overhead": overhead,
            "extra_s": sec["median_round_s"] - plain["median_round_s"],
            "max_abs_diff": diff,
        }
        # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("machine:", platform.platform(), platform.processor(), f"python {sys.version.split()[0]}",
          f"train-steps {args.train_steps} crop {args.crop}")  # fmt: skip
    print("| clients | shares | FedAvg round (s) | SecAgg+ round (s) | extra (s) | overhead | "
          "max abs diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['secagg']['num_shares']} | "
            f"{r['fedavg']['median_round_s']:.2f} | {r['secagg']['median_round_s']:.2f} | "
            f"{r['extra_s']:+.2f} | {100 * r['overhead']:+.0f}% | {r['max_abs_diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
