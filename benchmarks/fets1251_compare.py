"""Test Dice of a fets-1251-shifted study per scanner group and method, and CFFL against FedAvg
with a paired bootstrap interval (securefed.stats.bootstrap_interval: scipy's BCa, 95 %, seeded)
per group.

    python benchmarks/fets1251_compare.py RUNDIR TRUTH_CSV [--against RUNDIR2] [--out FILE]

RUNDIR is a `securefed run` folder (its evaluation/per_case.csv); TRUTH_CSV the synthetic
federation's truth.csv (the scanner of each case: the groups are the preset's, named in it).
``--against RUNDIR2``: also RUNDIR's CFFL minus RUNDIR2's CFFL on the same test cases, paired
(e.g. the private study against the non-private one).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from securefed.stats import bootstrap_interval

SHIFTED = {
    "ge-1.5t-weak-enhancement": "weak T1ce enhancement",
    "philips-3t-flair-unsuppressed": "unsuppressed FLAIR",
    "siemens-3t-enhancement-only": "enhancement only (tumour-confined)",
}


def _group(scanner: str) -> str:
    return SHIFTED.get(scanner, "standard")


def _read(rundir: Path) -> dict[str, dict[str, float]]:
    """method -> subject -> test Dice (mean of the three regions)."""
    dice: dict[str, dict[str, float]] = defaultdict(dict)
    for row in csv.DictReader((rundir / "evaluation" / "per_case.csv").open()):
        if row["group"] == "test" and row["dice_mean"] not in ("", "nan"):
            dice[row["method"]][row["subject_id"]] = float(row["dice_mean"])
    return dice


def _paired(diff: np.ndarray) -> tuple[dict[str, float] | None, str]:
    """The mean difference with its paired BCa interval (None under 3 cases) and a table cell."""
    if len(diff) < 3:
        return None, "n too small"
    low, high = bootstrap_interval(np.mean, [diff], vectorized=True, n_resamples=5000,
                                   method="BCa")  # fmt: skip
    doc = {"mean": float(diff.mean()), "low": low, "high": high}
    return doc, f"{diff.mean():+.3f} [{low:+.3f}, {high:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rundir", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--against", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    scanner = {r["subject_id"]: r["scanner"] for r in csv.DictReader(args.truth.open())}
    dice = _read(args.rundir)
    other = _read(args.against)["cffl"] if args.against else {}
    groups = ["standard", *SHIFTED.values(), "all shifted", "all"]
    members = {
        g: sorted(s for s in dice.get("fedavg", {})
                  if g == "all" or _group(scanner[s]) == g
                  or (g == "all shifted" and _group(scanner[s]) != "standard"))
        for g in groups
    }  # fmt: skip
    doc: dict[str, object] = {"rundir": str(args.rundir), "groups": {}}
    if args.against:
        doc["against"] = str(args.against)
    print(f"{'group':38s} {'n':>4s} " + " ".join(f"{m:>12s}" for m in sorted(dice)) +
          "   CFFL - FedAvg [95% CI]" +
          ("   CFFL - CFFL(against) [95% CI]" if args.against else ""))  # fmt: skip
    for g in groups:
        subjects = members[g]
        row: dict[str, object] = {"n": len(subjects)}
        for m in sorted(dice):
            values = [dice[m][s] for s in subjects if s in dice[m]]
            row[m] = float(np.mean(values)) if values else None
        diff = np.array([dice["cffl"][s] - dice["fedavg"][s] for s in subjects
                         if s in dice.get("cffl", {})])  # fmt: skip
        paired, cell = _paired(diff)
        if paired is not None:
            row["cffl_minus_fedavg"] = paired
        if args.against:
            vs = np.array([dice["cffl"][s] - other[s] for s in subjects
                           if s in dice.get("cffl", {}) and s in other])  # fmt: skip
            paired, vs_cell = _paired(vs)
            if paired is not None:
                row["cffl_minus_against_cffl"] = paired
            cell += f"   {vs_cell}"
        doc["groups"][g] = row  # type: ignore[index]
        means = " ".join(
            f"{row[m]:12.3f}" if isinstance(row[m], float) else f"{'-':>12s}" for m in sorted(dice)
        )
        print(f"{g:38s} {len(subjects):4d} {means}   {cell}")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
