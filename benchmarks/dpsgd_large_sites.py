"""What DP-SGD gains over a public start at the largest sites of the FeTS-scale federation.

The federation: ``securefed synth --preset fets-1251-shifted`` at 4 mm (1,251 cases, 23
institutions; benchmarks/fets1251_shifted.sh). Its two largest institutions (511 and 382 cases)
each train ALONE (as securefed's ``local`` baseline: no federation, the site's own train cases
only), starting from a public start, and are scored on their own test cases:

- ``public start``: the dp-unet pretrained on public data (``securefed pretrain`` on ``securefed
  synth --preset public --seed 101 --spacing 4``: 32 synthetic cases of other scanners), no site
  data at all;
- ``no DP``: the same schedule (rounds x local steps, batch, learning rate, fresh Adam each round,
  ``training.trainable = "outer-blocks"``) with securefed's ``train_local``, not private: the
  reference of what the site's data can give on this schedule;
- ``DP-SGD eps 8`` and ``eps 4`` (per patient, delta 1e-6, replace-one): securefed's own DP-SGD
  path, ``securefed.training.dpsgd.train_dp_round`` once per round with the plan of
  ``plan_dpsgd`` (sampling without replacement from N = 400 public patient slots, batches from
  ``dp_batches``; the noise multiplier comes from that plan, i.e. from public values only), the
  site's privacy ledger charged before each round (``site_ledger``).

Split: the study's (``load_federation(...).splits`` with the protocol's split_seed,
test_fraction, val_fraction, as ``securefed run`` does), so the test cases are the study's test
cases of those sites; validation cases are not used (no model selection: the last round's model
is scored). Score: ``evaluate_local`` with the protocol's ``[evaluation]`` (sliding window 48^3),
mean Dice of TC/WT/ET per test case; the gain of a method is the per-case paired difference to
the public start, its mean with a 95% BCa bootstrap interval (``securefed.stats``, seeded).

Learning rate and clipping norm: the protocol defaults (``training.lr`` 0.003 with Adam, the lr
of DP-SGD's global rounds in ``securefed run``; ``dp_sgd.max_grad_norm`` 1.0), NOT tuned on the
sites' data (nor on public data: not within this benchmark's compute budget). The DP-SGD noise
is drawn from site-local secrets (``os.urandom``) as in a real site: one noise draw per run.

Usage (from the repository root; the federation and the study protocol must exist):
  OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/dpsgd_large_sites.py \\
      [--data benchmarks/_work/f1251s/data] \\
      [--study-protocol benchmarks/_work/f1251s/study-protocol/protocol.toml] \\
      [--work benchmarks/_work/dpsgd-large] [--batch 32] [--rounds 10] [--local-steps 20] \\
      [--epsilon 8,4] [--draws 1] [--population 400] [--pretrain-steps 1000] [--sites 2] \\
      [--probe-steps 0] [--out benchmarks/results/dpsgd-large-sites.json]
The recorded run (benchmarks/results/dpsgd-large-sites.md): the defaults with ``--draws 2,1``,
the runs of each site in its own process (``--only 1`` and ``--only 18``), then once without
``--only`` to collect the kept runs into ``--out`` (it prints the markdown table).
Work files (public data, public start, protocols, ledgers, per-run results) go to ``--work``;
a finished run (site x method) is kept there and not rerun. ``--probe-steps N``: only time N
steps of each kind at the largest site and exit.

Machine notes: written for a 2-core VM shared with a running study (``securefed run`` with two
Ray workers); torch runs on ``--threads`` (default 1) CPU threads, the JSON records the load
average before and after (and after each run). There a 200-step run of batch 32 took 4-11
minutes (217-641 s, with the load average between 3 and 12) and scoring 58-77 test cases
0.5-1 minute; loading a site's cases 1-2 minutes. DP-SGD computes one gradient per sample
(``torch.func.vmap``) of the 13,257 outer-block parameters only.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
SECUREFED = ROOT / ".venv" / "bin" / "securefed"
PUBLIC_SOURCE = "securefed synth --preset public --seed 101 --spacing 4"
METHODS = ("no-dp", "dp-sgd")


def _csv(kind: type, text: str) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def _run(cmd: list[str], log: Path) -> None:
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


def dp_protocol(
    study: dict[str, Any],
    args: argparse.Namespace,
    epsilon: float,
    weights: dict | None,
    batch: int | None = None,
) -> dict[str, Any]:
    """The study protocol's data, evaluation and model settings with DP-SGD of the outer blocks
    from the public start: ``rounds`` x ``local_steps`` steps of batch ``batch``, no finetuning
    rounds (a site training alone), population N of public patient slots."""
    doc = json.loads(json.dumps(study))  # a deep copy
    doc["study"] = {**doc["study"], "name": f"fets1251-dpsgd-large-eps{epsilon:g}",
                    "description": "DP-SGD of the two largest sites alone, from a public start "
                    "(benchmarks/dpsgd_large_sites.py)."}  # fmt: skip
    doc["privacy"] = {**doc["privacy"], "total_epsilon": float(epsilon)}
    train = {k: v for k, v in doc["training"].items() if k not in ("initial_weights",)}
    train.update(
        model="dp-unet", batch_size=int(batch or args.batch), global_rounds=int(args.rounds),
        local_steps=int(args.local_steps), finetune_rounds=0, trainable="outer-blocks",
        baselines=["local"],
        dp_sgd={"enabled": True, "epsilon": float(epsilon), "delta": 1e-6,
                "max_grad_norm": 1.0, "amplification": "sampling",
                "population": int(args.population)},
    )  # fmt: skip
    if weights is not None:
        train["initial_weights"] = weights
    doc["training"] = train
    return doc


def write_protocols(args: argparse.Namespace, log: Path) -> dict[float, Path]:
    """Public data, public start and one protocol per epsilon under ``args.work``."""
    import tomli_w

    work = args.work
    study_path = args.study_protocol
    study = tomllib.loads(study_path.read_text())
    for name in ("projection.json", "bounds.json"):  # pinned by the study protocol
        (work / name).write_bytes((study_path.parent / name).read_bytes())
    public = work / "public"
    if not public.is_dir():
        _run([str(SECUREFED), "synth", "--preset", "public", "--seed", "101", "--spacing", "4",
              "--out", str(public)], log)  # fmt: skip
    start = work / "public-start.npz"
    if not start.is_file():
        base = work / "pretrain-protocol.toml"
        # pretrained at the study's batch (2): 1,000 steps of batch 32 cost 16x the CPU time
        batch = int(study["training"]["batch_size"])
        base.write_text(tomli_w.dumps(dp_protocol(study, args, max(args.epsilon), None, batch)))
        _run([str(SECUREFED), "pretrain", str(base), "--data", str(public), "--out", str(start),
              "--source", PUBLIC_SOURCE, "--steps", str(args.pretrain_steps)], log)  # fmt: skip
    from securefed.protocol.pinned import file_sha256

    pinned = {"file": start.name, "sha256": file_sha256(start)}
    out = {}
    for eps in args.epsilon:
        path = work / f"protocol-eps{eps:g}.toml"
        path.write_text(tomli_w.dumps(dp_protocol(study, args, eps, pinned)))
        _run([str(SECUREFED), "protocol", "check", str(path)], log)
        out[eps] = path
    return out


def site_data(loaded: Any, data: Path, sites: int) -> list[dict[str, Any]]:
    """The ``sites`` largest partitions with their study split (train and test subject ids)."""
    from securefed.data import load_federation

    d = loaded.protocol.data
    fed = load_federation(data, partitioning=d.partitioning, check="header")
    splits = fed.splits(seed=d.split_seed, test_fraction=d.test_fraction,
                        val_fraction=d.val_fraction)  # fmt: skip
    parts = sorted(fed.partitions.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:sites]
    out = []
    for pid, subjects in parts:
        row = {"partition_id": int(pid), "cases": len(subjects), "federation": fed}
        for split in ("train", "val", "test"):
            row[split] = [s for s in subjects if splits[s] == split]
        row["groups"] = [fed.patient(s) for s in row["train"]] if fed.patient_of else None
        out.append(row)
    return out


def train_run(
    loaded: Any,
    method: str,
    train: list[dict[str, Any]],
    start: list[np.ndarray],
    site: dict[str, Any],
    ledger_dir: Path,
    rounds: int | None = None,
    probe_steps: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a copy of the public start at one site: ``no-dp`` (train_local, rounds of
    local_steps steps, fresh optimiser each round) or ``dp-sgd`` (train_dp_round per round)."""
    from securefed.models import build_model
    from securefed.training import dpsgd
    from securefed.training.local import set_weights, train_local

    spec = loaded.protocol.training
    model = build_model(spec)
    set_weights(model, start)
    lr = float(spec.lr)
    rounds = int(spec.global_rounds if rounds is None else rounds)
    steps = int(probe_steps or spec.local_steps)
    info: dict[str, Any] = {"lr": lr, "rounds": rounds, "local_steps": steps,
                            "batch_size": int(spec.batch_size), "round_loss": []}  # fmt: skip
    t0 = time.perf_counter()
    if method == "dp-sgd":
        plan = dpsgd.plan_dpsgd(loaded.protocol)
        if probe_steps:  # timing only: a shorter round of the same plan
            plan = dataclasses.replace(plan, steps_per_round=steps)
        ledger = dpsgd.site_ledger(loaded, site["partition_id"], ledger_dir)
        info.update(noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                    population=plan.population, sampling=plan.sampling,
                    planned_epsilon=plan.planned_epsilon())  # fmt: skip
        for r in range(1, rounds + 1):
            rid = dpsgd.release_id_for(ledger, "global", r)
            out = dpsgd.train_dp_round(model, train, spec, plan=plan, ledger=ledger,
                                       release_id=rid, lr=lr, groups=site["groups"])  # fmt: skip
            info["round_loss"].append(out["loss"])
            info["epsilon_spent"] = out["epsilon_spent"]
    else:
        for r in range(1, rounds + 1):
            epochs = -(-steps * spec.batch_size // len(train))
            seed = 1000 * site["partition_id"] + r
            out = train_local(model, train, spec, epochs=epochs, max_steps=steps, lr=lr, seed=seed)
            info["round_loss"].append(out["loss"])
    info["train_seconds"] = time.perf_counter() - t0
    info["steps"] = rounds * steps
    return model, info


def bca(diff: np.ndarray, seed: int = 0) -> tuple[float, float]:
    from securefed.stats import bootstrap_interval

    low, high = bootstrap_interval(np.mean, [diff], vectorized=True, n_resamples=9999,
                                   seed=seed, method="BCa")  # fmt: skip
    return low, high


def _key(method: str, eps: float | None, draw: int) -> str:
    """The run's name: public-start, no-dp, dp-sgd-eps8, dp-sgd-eps8-draw2, ..."""
    key = method if eps is None else f"{method}-eps{eps:g}"
    return key if draw == 1 else f"{key}-draw{draw}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The results as the markdown table of benchmarks/results/dpsgd-large-sites.md."""
    lines = [
        "| site | train patients | test cases | method | epsilon | noise multiplier | batch "
        "| steps | mean test Dice | gain over public start [95% BCa] |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"public-start": "public start", "no-dp": "no DP (reference)", "dp-sgd": "DP-SGD"}
    for r in results:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:g}"
        name = names[r["method"]] + (f" (draw {r['draw']})" if r.get("draw", 1) > 1 else "")
        m = f"{r['noise_multiplier']:.2f}" if "noise_multiplier" in r else "-"
        batch = r.get("batch_size", "-")
        gain = "-"
        if "gain_mean" in r:
            lo, hi = r["gain_ci95_bca"]
            gain = f"{r['gain_mean']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        lines.append(
            f"| {r['site']} | {r['train_patients']} | {r['test_cases']} | {name} "
            f"| {eps} | {m} | {batch} | {r['steps']} | {r['mean_dice']:.4f} | {gain} |"
        )
    return "\n".join(lines)


def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks/_work/f1251s/data")
    study = ROOT / "benchmarks/_work/f1251s/study-protocol/protocol.toml"
    ap.add_argument("--study-protocol", type=Path, default=study)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks/_work/dpsgd-large")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--epsilon", type=lambda t: _csv(float, t), default=[8.0, 4.0])
    ap.add_argument("--population", type=int, default=400)
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=2)
    draws = "DP-SGD runs (noise draws) of each epsilon, in --epsilon's order (one value: all)"
    ap.add_argument("--draws", type=lambda t: _csv(int, t), default=[1], help=draws)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probe-steps", type=int, default=0)
    only = "run only these partition ids (e.g. one process per site); writes no --out"
    ap.add_argument("--only", type=lambda t: _csv(int, t), default=None, help=only)
    ap.add_argument("--note", default="", help="what else ran on the machine (into the JSON)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dpsgd-large-sites.json")
    args = ap.parse_args()

    import torch

    from securefed.protocol import load_protocol
    from securefed.training.local import evaluate_local, prepare_cases
    from securefed.training.pretrained import initial_weights

    torch.set_num_threads(args.threads)
    wall0 = time.perf_counter()
    load0 = os.getloadavg()
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "commands.log"
    protocols = write_protocols(args, log)
    loaded = {eps: load_protocol(p) for eps, p in protocols.items()}
    first = loaded[args.epsilon[0]]
    start = initial_weights(first)
    assert start is not None
    provenance = json.loads((args.work / "public-start.json").read_text())
    sites = site_data(first, args.data, args.sites)
    runs_dir = args.work / "runs"
    runs_dir.mkdir(exist_ok=True)
    results: list[dict[str, Any]] = []
    for site in sites:
        if args.only and site["partition_id"] not in args.only:
            continue
        fed = site["federation"]
        pid = site["partition_id"]
        runs = [("public-start", None, 1), ("no-dp", None, 1)]
        per_eps = args.draws * len(args.epsilon) if len(args.draws) == 1 else args.draws
        runs += [("dp-sgd", e, d) for e, n in zip(args.epsilon, per_eps, strict=True)
                 for d in range(1, n + 1)]  # fmt: skip
        keys = [_key(m, e, d) for m, e, d in runs]
        done = all((runs_dir / f"site{pid}-{k}.json").is_file() for k in keys)
        t0 = time.perf_counter()
        spec = first.protocol.training
        train, test = [], []
        if not done or args.probe_steps:  # every run kept: no need to load the cases
            train = prepare_cases([fed.cases[s] for s in site["train"]], spec)
            test = prepare_cases([fed.cases[s] for s in site["test"]], spec)
        load_s = time.perf_counter() - t0
        print(f"site {pid}: {len(site['train'])} train, {len(site['test'])} test cases "
              f"({load_s:.0f} s to load)", flush=True)  # fmt: skip
        if args.probe_steps:
            probe = {}
            for method in ("no-dp", "dp-sgd"):
                ledger = args.work / "probe-ledgers" / str(time.time())
                _, info = train_run(first, method, train, start, site, ledger, rounds=1,
                                    probe_steps=args.probe_steps)  # fmt: skip
                probe[method] = info["train_seconds"] / args.probe_steps
                print(f"{method}: {probe[method]:.2f} s/step at batch {args.batch}", flush=True)
            return
        eval_spec = first.protocol.evaluation
        scored: dict[str, dict[str, Any]] = {}
        for (method, eps, draw), key in zip(runs, keys, strict=True):
            path = runs_dir / f"site{pid}-{key}.json"
            if path.is_file():
                scored[key] = json.loads(path.read_text())
                print(f"site {pid} {key}: kept from {path}", flush=True)
                continue
            lp = loaded[eps if eps is not None else args.epsilon[0]]
            if method == "public-start":
                from securefed.models import build_model
                from securefed.training.local import set_weights

                model = build_model(lp.protocol.training)
                set_weights(model, start)
                info: dict[str, Any] = {"steps": 0}
            else:
                ledgers = args.work / "ledgers" / f"site{pid}-{key}-{int(time.time())}"
                model, info = train_run(lp, method, train, start, site, ledgers)
            t1 = time.perf_counter()
            ev = evaluate_local(model, test, eval_spec)
            info["eval_seconds"] = time.perf_counter() - t1
            info["load_average_after"] = os.getloadavg()
            row = {"method": method, "epsilon": eps, "draw": draw, **info,
                   "cases": [{"subject_id": c["subject_id"], "dice_mean": c["dice_mean"]}
                             for c in ev["cases"]],
                   "mean_dice": float(np.mean([c["dice_mean"] for c in ev["cases"]]))}  # fmt: skip
            path.write_text(json.dumps(row, indent=1))
            scored[key] = row
            print(f"site {pid} {key}: mean Dice {row['mean_dice']:.4f} "
                  f"({info.get('train_seconds', 0):.0f} s train)", flush=True)  # fmt: skip
        base = np.array([c["dice_mean"] for c in scored["public-start"]["cases"]], dtype=float)
        for key, row in scored.items():
            vals = np.array([c["dice_mean"] for c in row["cases"]], dtype=float)
            entry = {k: v for k, v in row.items() if k != "cases"}
            entry.update(site=pid, site_cases=site["cases"], train_patients=len(site["train"]),
                         val_cases=len(site["val"]), test_cases=len(site["test"]), run=key,
                         per_case_dice=[round(float(v), 5) for v in vals])  # fmt: skip
            if key != "public-start":
                diff = vals - base
                lo, hi = bca(diff, seed=pid)
                entry.update(gain_mean=float(diff.mean()), gain_ci95_bca=[lo, hi],
                             gain_positive_cases=int((diff > 0).sum()))  # fmt: skip
            results.append(entry)
    out = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": args.threads,
                    "note": "2-core VM shared with a running `securefed run` study (2 Ray "
                            "workers); run under nice -n 5, OMP_NUM_THREADS=1",
                    "runs": args.note,
                    "load_average_start": load0, "load_average_end": os.getloadavg()},
        "wall_seconds": time.perf_counter() - wall0,
        "settings": {"batch_size": args.batch, "rounds": args.rounds,
                     "local_steps": args.local_steps, "population": args.population,
                     "epsilon": args.epsilon, "delta": 1e-6, "pretrain_steps": args.pretrain_steps,
                     "lr": float(first.protocol.training.lr), "optimizer":
                     first.protocol.training.optimizer, "max_grad_norm":
                     float(first.protocol.training.dp_sgd.max_grad_norm),
                     "trainable": "outer-blocks", "protocols": {f"{k:g}": str(v) for k, v in
                     protocols.items()}, "public_start": provenance},
        "results": results,
    }  # fmt: skip
    if args.only:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(markdown_table(results))
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
