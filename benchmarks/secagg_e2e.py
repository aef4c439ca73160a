"""SecAgg+ against plain FedAvg end to end, with real local training: the demo study's global
phase run twice on the same data, once per aggregation mode (everything else from the protocol).

Writes ``<work>/<mode>.toml`` (protocols/demo.toml with ``training.aggregation`` = mode and
baselines = fedavg), runs ``securefed run ... --stop-after training`` for each, and prints the
median round seconds (rounds 2..N; round 1 includes data preparation and actor warm-up), the
overhead and the best pooled validation Dice of each run.

Usage:
  .venv/bin/python benchmarks/secagg_e2e.py --data DEMO_DATA [--work benchmarks/_work/e2e-agg]
      [--protocol protocols/demo.toml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]


def _protocol(base: Path, mode: str, out: Path) -> Path:
    data = tomllib.loads(base.read_text(encoding="utf-8"))
    data["study"]["name"] = f"secagg-e2e-{mode.replace('+', 'plus')}"
    data["training"]["aggregation"] = mode
    data["training"]["baselines"] = ["fedavg"]
    path = out / f"{mode.replace('+', 'plus')}.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "e2e-agg")
    ap.add_argument("--protocol", type=Path, default=ROOT / "protocols" / "demo.toml")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "securefed"
    rows = {}
    for mode in ("fedavg", "secagg+"):
        proto = _protocol(a.protocol, mode, a.work)
        run = a.work / f"run-{mode.replace('+', 'plus')}"
        t0 = time.perf_counter()
        subprocess.run(
            [str(exe), "run", str(proto), "--data", str(a.data), "--out", str(run),
             "--stop-after", "training"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        state = json.loads((run / "training" / "global" / "state.json").read_text())
        secs = [h["seconds"] for h in state["history"]]
        rows[mode] = {
            "median": statistics.median(secs[1:]),
            "range": (min(secs[1:]), max(secs[1:])),
            "round1": secs[0],
            "best": (state.get("best_round"), state.get("best_score")),
            "wall": time.perf_counter() - t0,
        }
        print(mode, json.dumps(rows[mode]), flush=True)
    f, s = rows["fedavg"]["median"], rows["secagg+"]["median"]
    print(f"SecAgg+ overhead per round: {s - f:+.2f} s ({100 * (s - f) / f:+.1f} %)")


if __name__ == "__main__":
    main()
