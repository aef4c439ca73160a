"""Study stage 5: results.json and report.html from what the earlier stages wrote."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from securefed import __version__
from securefed.report import read_json, write_json_atomic, write_report

__all__ = ["build_results", "summarize_methods"]

REGION_KEYS = {"TC": "dice_tc", "WT": "dice_wt", "ET": "dice_et"}
NON_PRIVATE = {"centralized", "cffl-ideal"}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(vals)) if vals else None


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mean = {r: _mean([x[k] for x in rows]) for r, k in REGION_KEYS.items()}
    mean["mean"] = _mean([x["dice_mean"] for x in rows])
    hd = {r: _median([x.get(f"hd95_{r.lower()}") for x in rows]) for r in REGION_KEYS}
    return {"mean": mean, "hd95": hd, "n": len(rows)}


def summarize_methods(
    rows: list[dict[str, Any]], scanner_of: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per method: means per region, HD95 medians, and per cluster / site / scanner."""
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    out: dict[str, dict[str, Any]] = {}
    order = ["local", "local-finetune", "fedavg", "cffl", "cffl-ideal", "centralized"]
    for method in sorted(by_method, key=lambda m: order.index(m) if m in order else 99):
        mrows = by_method[method]
        s = _summary(mrows)
        res: dict[str, Any] = {
            "mean": s["mean"],
            "hd95": s["hd95"],
            "n_cases": s["n"],
            "private": method not in NON_PRIVATE,
        }
        for key, label in (("cluster", "per_cluster"), ("site", "per_site")):
            groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in mrows:
                if r.get(key) is not None:
                    groups[str(r[key])].append(r)
            res[label] = {
                g: {**_summary(v)["mean"], "n": len(v)}
                for g, v in sorted(groups.items(), key=lambda kv: kv[0])
            }
        if scanner_of:
            groups = defaultdict(list)
            for r in mrows:
                groups[scanner_of.get(r["subject_id"], "?")].append(r)
            res["per_scanner"] = {
                g: {**_summary(v)["mean"], "n": len(v)} for g, v in groups.items()
            }
        out[method] = res
    return out


def _privacy(ctx: Any) -> dict[str, Any]:
    from securefed.privacy import read_ledger

    p = ctx.loaded.protocol.privacy
    plain = ctx.loaded.protocol.release.mode == "plain"
    per_site: dict[str, Any] = {}
    for site in ctx.sites:
        path = ctx.paths.site(site.id) / "ledger.jsonl"
        state = read_ledger(path) if path.exists() else None
        per_site[site.id] = {
            # DP spend recorded in the site's ledger (composed over its releases) ...
            "epsilon": state.spent() if state is not None else 0.0,
            "delta": p.total_delta if state is not None and state.charges else 0.0,
            "releases": len(state.charges) if state is not None else 0,
            # ... and what that does not cover: a plain feature release has no DP at all.
            "overall_epsilon": math.inf if plain else (state.spent() if state else 0.0),
        }
    notes = []
    mode = ctx.loaded.protocol.release.mode
    if mode == "plain":
        notes.append(
            "Feature release 'plain' (the paper's behaviour): 372 raw values per case reached the "
            "server, sealed in transit only; their epsilon is infinite and is not in the ledgers."
        )
    if not ctx.loaded.protocol.training.dp_sgd.enabled:
        notes.append(
            "Model updates were protected by secure aggregation only (no DP-SGD): the aggregate "
            "model is not differentially private."
        )
    return {"total_epsilon": p.total_epsilon, "total_delta": p.total_delta,
            "per_site": per_site, "notes": notes}  # fmt: skip


def build_results(ctx: Any) -> dict[str, Any]:
    from securefed.federated.evaluation_stage import read_case_rows
    from securefed.federated.study import read_clusters

    proto = ctx.loaded.protocol
    root = ctx.paths.root
    state = read_json(ctx.paths.state)
    clusters = read_clusters(ctx.paths.clusters)
    sites = []
    for site in ctx.sites:
        mine = [r for r in clusters if r["partition_id"] == site.partition_id]
        sites.append(
            {"site": site.id, "partition_id": site.partition_id,
             "train": sum(r["split"] == "train" for r in mine),
             "val": sum(r["split"] == "val" for r in mine),
             "test": sum(r["split"] == "test" for r in mine),
             "role": "unseen" if site.partition_id in ctx.held_out else "training"}
        )  # fmt: skip
    excluded = [{"case": p.subject_id, "problem": str(p)} for p in ctx.federation.problems]
    clustering = read_json(root / "server" / "clustering" / "clustering.json")
    scanner_of = None
    if ctx.truth is not None:
        import pandas as pd

        df = pd.read_csv(ctx.truth, dtype={"subject_id": str})
        if "scanner" in df.columns:
            scanner_of = dict(zip(df["subject_id"], df["scanner"].astype(str), strict=True))
    rows = read_case_rows(root / "evaluation" / "per_case.csv")
    seen = [r for r in rows if r["group"] == "test"]
    unseen = [r for r in rows if r["group"] == "unseen"]
    phases = read_json(ctx.paths.training / "phases.json")
    curves = {"global": phases["global"]["history"]}
    fallbacks = []
    for c, info in phases["clusters"].items():
        if info["history"]:
            curves[f"cluster {c}"] = info["history"]
        if info["status"] != "finetuned":
            fallbacks.append({"cluster": c, "reason": f"{info['status']}: {info['reason']}"})
    warnings = []
    if proto.release.mode == "plain":
        warnings.append(
            "Features were released in 'plain' mode: the server held every case's 372 raw "
            "radiomic values (epsilon = infinity), as in the paper."
        )
    results = {
        "securefed_version": __version__,
        "created_at": state.get("created_at"),
        "protocol": {"name": proto.study.name, "sha256": ctx.loaded.sha256,
                     "mode": proto.study.mode, "release_mode": proto.release.mode,
                     "aggregation": proto.training.aggregation},
        "warnings": warnings,
        "data": {"cases": len(clusters), "sites": sites, "excluded": excluded},
        "clustering": clustering,
        "segmentation": {
            "methods": summarize_methods(seen, scanner_of),
            "unseen": summarize_methods(unseen, scanner_of) if unseen else {},
            "fallbacks": fallbacks,
            "global_best_round": phases["global"]["best_round"],
        },
        "training_curves": curves,
        "privacy": _privacy(ctx),
        "timings": {k: v["seconds"] for k, v in state["completed"].items()},
    }  # fmt: skip
    write_json_atomic(root / "results.json", results)
    write_report(root, results)
    return results
