"""The demo's run-to-run spread: mean test Dice of FedAvg and CFFL per run of
``benchmarks/demo_spread.sh`` (simulations at several training seeds, pilots from the sites'
secret seeds), each kind's mean and standard deviation, and whether the pilots differ from the
simulations (Welch's t-test and the Mann-Whitney U test, scipy.stats).

    python benchmarks/demo_spread.py OUTDIR [--extra KIND:FEDAVG:CFFL ...]

``--extra`` adds runs on record elsewhere (e.g. ``simulation:0.815:0.834`` for a
``securefed demo`` at the shipped seed, ``pilot:0.803:0.811``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu, ttest_ind

METHODS = ("fedavg", "cffl")


def _simulation(path: Path) -> dict[str, float]:
    methods = json.loads(path.read_text())["segmentation"]["methods"]
    return {m: float(methods[m]["mean"]["mean"]) for m in METHODS}


def _pilot(path: Path) -> dict[str, float]:
    methods = json.loads(path.read_text())["methods"]
    return {m: float(methods[m]["test"]["dice_mean"]) for m in METHODS}


def collect(out: Path, extra: list[str]) -> list[tuple[str, str, dict[str, float]]]:
    """(kind, name, {method: mean test Dice}) per finished run under ``out``, then ``extra``."""
    runs = []
    for path in sorted(out.glob("run-demo-seed*/results.json")):
        seed = re.sub(r"\D", "", path.parent.name)
        runs.append(("simulation", f"training seed {seed}", _simulation(path)))
    for path in sorted(out.glob("pilot-*/study/results.json")):
        runs.append(("pilot", path.parent.parent.name, _pilot(path)))
    for i, item in enumerate(extra):
        kind, fedavg, cffl = item.split(":")
        runs.append((kind, f"on record {i + 1}", {"fedavg": float(fedavg), "cffl": float(cffl)}))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args()
    runs = collect(args.out, args.extra)
    print("| kind | run | FedAvg | CFFL | CFFL - FedAvg |\n|---|---|---:|---:|---:|")
    for kind, name, d in runs:
        print(f"| {kind} | {name} | {d['fedavg']:.3f} | {d['cffl']:.3f} | "
              f"{d['cffl'] - d['fedavg']:+.3f} |")  # fmt: skip
    print()
    by_kind = {k: [d for kind, _, d in runs if kind == k] for k in ("simulation", "pilot")}
    for method in (*METHODS, "gain"):
        values = {
            k: np.array([d["cffl"] - d["fedavg"] if method == "gain" else d[method] for d in ds])
            for k, ds in by_kind.items()
        }
        line = [f"{method}:"]
        for k, v in values.items():
            if v.size:
                sd = f"{v.std(ddof=1):.3f}" if v.size > 1 else "-"
                line.append(f"{k} n={v.size} mean {v.mean():.3f} sd {sd} "
                            f"range {v.min():.3f}-{v.max():.3f};")  # fmt: skip
        sim, pil = values["simulation"], values["pilot"]
        if sim.size > 1 and pil.size > 1:
            t = ttest_ind(pil, sim, equal_var=False)
            u = mannwhitneyu(pil, sim, alternative="two-sided")
            line.append(f"pilot - simulation {pil.mean() - sim.mean():+.3f} "
                        f"(Welch p = {t.pvalue:.3f}, Mann-Whitney p = {u.pvalue:.3f})")  # fmt: skip
        print(" ".join(line))


if __name__ == "__main__":
    main()
