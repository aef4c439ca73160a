"""Homomorphic (fixed-point BFV) aggregation for the paper's model (1,401,891 parameters):
ciphertext size against fp32, aggregate error against the clipping range, encryption time per
client, the aggregator's sum and the decryptor's decrypt-and-verify time; then round time in
Flower's simulation engine against plain FedAvg and SecAgg+ (benchmarks/secagg_bench.py's idle
sites: no training, so the overhead is the worst case).

    .venv/bin/python benchmarks/he_bench.py --clients 5 --rounds 3 --out benchmarks/_work/he

Prints JSON lines and Markdown tables; results are recorded in benchmarks/results/he.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from secagg_bench import PROTOCOL, bench_task, run_one

from securefed.crypto.bfv import (
    decrypt_aggregate,
    encoding_for,
    encrypt_contribution,
    load_aggregator_context,
    make_key,
    sum_contributions,
)
from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.protocol import load_protocol

PH = "sha256:" + "0" * 64


def model_vector() -> np.ndarray:
    """The paper's DynUNet, its unique parameters flattened (1,401,891 values)."""
    import torch

    from securefed.models import build_model
    from securefed.protocol.schema import TrainingSpec

    torch.manual_seed(0)
    model = build_model(TrainingSpec())
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def micro(clients: int, clip: float, weights_uniform: bool) -> dict:
    base = model_vector().astype(np.float64)
    rng = np.random.default_rng(0)
    vectors = [base + rng.normal(0, 1e-2, base.size) for _ in range(clients)]
    # case counts: FeTS2022-like site sizes (their sum, 1382 > 1024, needs one value per slot)
    fets = [511, 382, 300, 129, 60]
    weights = [1] * clients if weights_uniform else [fets[i % 5] for i in range(clients)]
    enc = encoding_for(clip, sum(weights))
    key = make_key()
    agg = load_aggregator_context(key.aggregator_bytes())
    blobs, enc_s = [], []
    for i, (v, w) in enumerate(zip(vectors, weights, strict=True)):
        t0 = time.perf_counter()
        blobs.append(encrypt_contribution(key, v, weight=w, site=i, enc=enc, protocol_hash=PH,
                                          phase="global", rnd=1))  # fmt: skip
        enc_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    total = sum_contributions(agg, blobs)
    sum_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = decrypt_aggregate(key, total, sites=list(range(clients)), enc=enc, protocol_hash=PH,
                            phase="global", rnd=1)  # fmt: skip
    dec_s = time.perf_counter() - t0
    truth = np.average(np.clip(np.stack(vectors), -clip, clip), axis=0, weights=weights)
    err = float(np.max(np.abs(out.mean - truth)))
    fp32 = 4 * base.size
    return {
        "values": int(base.size), "clients": clients, "values_per_slot": enc.fields,
        "weights": "uniform" if weights_uniform else "case counts",
        "ciphertext_bytes": len(blobs[0]), "fp32_bytes": fp32,
        "ratio_to_fp32": len(blobs[0]) / fp32, "secagg_int64_ratio": 2.0,
        "encrypt_s_median": statistics.median(enc_s), "sum_s": sum_s, "decrypt_verify_s": dec_s,
        "max_abs_error": err, "error_relative_to_clip": err / clip,
    }  # fmt: skip


def run_bfv(work: Path, n: int, rounds: int) -> dict:
    """secagg_bench.run_one's federation under bfv (keys dealt to every site's folder)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    proto = work / "protocol.toml"
    proto.write_text(PROTOCOL.format(rounds=rounds, aggregation="bfv", shares=3, threshold=2))
    loaded = load_protocol(proto)
    counts = {p: 2 + (p % 5) for p in range(1, n + 1)}
    lines = ["subject_id,partition_id,split,cluster"]
    for p, k in counts.items():
        lines += [f"S{p}_{i},{p},train,0" for i in range(k)] + [f"S{p}_v,{p},val,0"]
    (work / "clusters.csv").write_text("\n".join(lines) + "\n")
    key = make_key()
    (work / "aggregator.ctx").write_bytes(key.aggregator_bytes())
    sites = []
    for p in counts:
        (work / "sites" / str(p) / "he").mkdir(parents=True)
        (work / "sites" / str(p) / "he" / "bfv.key").write_bytes(key.to_bytes())
        sites.append(SiteSettings(partition_id=p, data_dir=str(work), protocol=str(proto),
                                  assignments=str(work / "clusters.csv"),
                                  ledger_dir=str(work / "sites" / str(p))))  # fmt: skip
    cfg = phase_config(loaded, out_dir=work / "phase", sites=counts,
                       assignments=work / "clusters.csv", he_context=work / "aggregator.ctx",
                       decryptor=1)  # fmt: skip
    t0 = time.perf_counter()
    result = run_phase(cfg, sites, task=bench_task())
    wall = time.perf_counter() - t0
    per_round = [h["seconds"] for h in result.history if h["round"] >= 1]
    return {
        "clients": n, "aggregation": "bfv", "rounds": rounds, "round_s": per_round,
        "median_round_s": statistics.median(per_round[1:] or per_round), "wall_s": wall,
        "weights": [w.astype(np.float64) for w in result.best_weights],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clip", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/_work/he"))
    parser.add_argument("--skip-rounds", action="store_true", help="micro benchmark only")
    args = parser.parse_args()
    print("machine:", platform.platform(), platform.processor(), f"python {sys.version.split()[0]}")
    rows = [micro(args.clients, args.clip, True), micro(args.clients, args.clip, False)]
    for r in rows:
        print(json.dumps(r), flush=True)
    print("| weights | values/slot | ciphertext (MB) | vs fp32 | encrypt/client (s) | sum (s) | "
          "decrypt+verify (s) | max error / clip |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['weights']} | {r['values_per_slot']} | {r['ciphertext_bytes'] / 1e6:.2f} | "
              f"{r['ratio_to_fp32']:.2f}x | {r['encrypt_s_median']:.2f} | {r['sum_s']:.2f} | "
              f"{r['decrypt_verify_s']:.2f} | {r['error_relative_to_clip']:.1e} |")  # fmt: skip
    if args.skip_rounds:
        return
    n, rounds = args.clients, args.rounds
    runs = {
        "fedavg": run_one(args.out / "fedavg", n, "fedavg", rounds),
        "secagg+": run_one(args.out / "secagg", n, "secagg+", rounds),
        "bfv": run_bfv(args.out / "bfv", n, rounds),
    }
    plain = runs["fedavg"]["weights"]
    print("| aggregation | median round (s) | vs FedAvg | max abs diff vs FedAvg |")
    print("|---|---|---|---|")
    for name, run in runs.items():
        diff = max(float(np.max(np.abs(a - b)))
                   for a, b in zip(plain, run.pop("weights"), strict=True))  # fmt: skip
        ratio = run["median_round_s"] / runs["fedavg"]["median_round_s"]
        print(json.dumps(run), file=sys.stderr)
        print(f"| {name} | {run['median_round_s']:.2f} | {ratio:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
