"""One sweep row from a finished point: clustering quality, Dice with bootstrap intervals (overall
and per scanner group), attack advantages, epsilon spent per stage, bytes on the wire, time.

Columns (``sweep.csv``; ``sweep.json`` has the same rows plus per-scanner Dice): see
``COLUMNS`` and docs/sweep.md.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from securefed.fileio import read_json

__all__ = ["COLUMNS", "bootstrap_ci", "row_for"]

COLUMNS = (
    "point", "status", "release", "feature_epsilon", "training", "training_epsilon",
    "aggregation", "ari_scanner", "ari_institution", "dice_fedavg", "dice_fedavg_lo",
    "dice_fedavg_hi", "dice_cffl", "dice_cffl_lo", "dice_cffl_hi", "cffl_minus_fedavg",
    "cffl_minus_fedavg_lo", "cffl_minus_fedavg_hi", "advantage_institution",
    "advantage_scanner", "epsilon_features", "epsilon_clustering", "epsilon_training",
    "epsilon_total", "bytes_per_client_per_round", "wall_s", "global_reused", "reason",
)  # fmt: skip
_BOOT = 2000


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean (cases resampled)."""
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(_BOOT, values.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _cases(rundir: Path) -> dict[str, dict[str, float]]:
    """method -> {subject id: test dice_mean} from evaluation/per_case.csv."""
    out: dict[str, dict[str, float]] = {}
    path = rundir / "evaluation" / "per_case.csv"
    if not path.is_file():
        return out
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("group") == "test":
                out.setdefault(row["method"], {})[row["subject_id"]] = float(row["dice_mean"])
    return out


def _advantages(rundir: Path) -> dict[str, float | None]:
    path = rundir / "audit" / "features.json"
    out: dict[str, float | None] = {"institution": None, "scanner": None}
    if not path.is_file():
        return out
    for attack in read_json(path).get("attacks", []):
        name = str(attack.get("attack", ""))
        for key in out:
            if name == f"{key}-inference":
                value, chance = attack.get("value"), attack.get("chance")
                if isinstance(value, int | float) and isinstance(chance, int | float):
                    best = out[key]
                    adv = float(value) - float(chance)
                    out[key] = adv if best is None else max(best, adv)
    return out


def _number(value: Any) -> float | None:
    """A JSON number, or the strings a writer may use for infinity."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        return math.inf
    return None


def _study_seconds(rundir: Path) -> float:
    """Seconds of the study's stages as its state records them (a resumed run counts every
    stage once, whenever it ran)."""
    path = rundir / "state.json"
    if not path.is_file():
        return 0.0
    stages = read_json(path).get("completed", {})
    return float(sum(float(s.get("seconds", 0.0)) for s in stages.values()))


def _clustering_only(rundir: Path) -> dict[str, Any]:
    """A results-shaped mapping of a run stopped after clustering: the clustering quality
    (server/clustering/clustering.json) and each site's ledger spend."""
    from securefed.privacy.ledger import read_ledger
    from securefed.protocol import load_protocol

    report = rundir / "server" / "clustering" / "clustering.json"
    quality = read_json(report).get("quality", {}) if report.is_file() else {}
    # no training ran: a plain release is the only unbounded part of what left the sites
    plain = load_protocol(rundir / "protocol.toml").protocol.release.mode == "plain"
    per_site: dict[str, Any] = {}
    for ledger in sorted((rundir / "sites").glob("*/ledger.jsonl")):
        state = read_ledger(ledger)
        overall = math.inf if plain else state.spent()
        per_site[ledger.parent.name] = {"per_stage": state.spent_per_stage(),
                                        "overall_epsilon": overall}  # fmt: skip
    return {"clustering": {"quality": quality}, "privacy": {"per_site": per_site}}


def row_for(point: dict[str, Any], rundir: Path, audit_s: float) -> dict[str, Any]:
    """The row of a point whose run finished in ``rundir`` (the whole study, or its features and
    clustering stages: then no Dice); ``audit_s``: seconds of its attacks."""
    path = rundir / "results.json"
    results = read_json(path) if path.is_file() else _clustering_only(rundir)
    quality = results.get("clustering", {}).get("quality", {})
    methods = results.get("segmentation", {}).get("methods", {})
    cases = _cases(rundir)
    row: dict[str, Any] = {**point, "status": "done", "reason": ""}
    row["ari_scanner"] = quality.get("ari_scanner")
    row["ari_institution"] = quality.get("ari_institution")
    for method in ("fedavg", "cffl"):
        values = np.array(list(cases.get(method, {}).values()), dtype=float)
        mean = methods.get(method, {}).get("mean", {}).get("mean")
        row[f"dice_{method}"] = mean
        row[f"dice_{method}_lo"], row[f"dice_{method}_hi"] = bootstrap_ci(values)
    both = sorted(set(cases.get("fedavg", {})) & set(cases.get("cffl", {})))
    diff = np.array([cases["cffl"][s] - cases["fedavg"][s] for s in both], dtype=float)
    row["cffl_minus_fedavg"] = float(diff.mean()) if diff.size else None
    row["cffl_minus_fedavg_lo"], row["cffl_minus_fedavg_hi"] = bootstrap_ci(diff)
    adv = _advantages(rundir)
    row["advantage_institution"], row["advantage_scanner"] = adv["institution"], adv["scanner"]
    per_site = results.get("privacy", {}).get("per_site", {})
    for stage in ("features", "clustering", "training"):
        spent = [s.get("per_stage", {}).get(stage) for s in per_site.values()]
        spent = [v for v in spent if v is not None]
        row[f"epsilon_{stage}"] = max(spent) if spent else None
    overall = [_number(s.get("overall_epsilon")) for s in per_site.values()]
    row["epsilon_total"] = max((v for v in overall if v is not None), default=math.inf)
    row["bytes_per_client_per_round"] = results.get("wire", {}).get("bytes_per_client_per_round")
    row["wall_s"] = round(_study_seconds(rundir) + float(audit_s), 1)
    phases = rundir / "training" / "phases.json"
    row["global_reused"] = (
        bool(read_json(phases).get("global", {}).get("reused", False)) if phases.is_file() else None
    )
    row["per_scanner"] = {m: methods.get(m, {}).get("per_scanner") for m in ("fedavg", "cffl")}
    # real data (no truth.csv): Dice per site and per cluster are what groups the test cases
    row["per_site"] = {m: methods.get(m, {}).get("per_site") for m in ("fedavg", "cffl")}
    row["per_cluster"] = {m: methods.get(m, {}).get("per_cluster") for m in ("fedavg", "cffl")}
    return row
