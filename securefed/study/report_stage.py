"""Study stage 5, report: results.json and report.html from what the earlier stages wrote."""

from __future__ import annotations

import math
from typing import Any

from securefed import __version__
from securefed.clustering.assignments import Assignment, read_assignments
from securefed.evaluation.summary import summarize_methods
from securefed.fileio import atomic_write_bytes, read_json, write_json_atomic
from securefed.privacy.ledger import read_ledger
from securefed.protocol.egress import egress_table
from securefed.report import write_report
from securefed.study.context import StudyContext
from securefed.study.evaluation_stage import read_case_rows

__all__ = ["build_results", "run_report"]


def _privacy(ctx: StudyContext) -> dict[str, Any]:
    proto = ctx.loaded.protocol
    p = proto.privacy
    plain = proto.release.mode == "plain"
    # The trained model left every site too: without DP training it is not DP (egress table).
    unbounded = plain or proto.training.dp_training is None
    per_site: dict[str, Any] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    for site in ctx.sites:
        path = ctx.paths.site(site.id) / "ledger.jsonl"
        state = read_ledger(path) if path.exists() else None
        spent = state.spent() if state is not None else 0.0
        curves[site.id] = state.epsilon_curve() if state is not None else []
        per_site[site.id] = {
            "per_stage": state.spent_per_stage() if state is not None else {},
            # DP spend recorded in the site's ledger (composed over its releases) ...
            "epsilon": spent,
            "delta": p.total_delta if state is not None and state.charges else 0.0,
            "releases": len(state.charges) if state is not None else 0,
            # ... and what that does not cover: a plain feature release or a model trained
            # without DP-SGD has no DP at all.
            "overall_epsilon": math.inf if unbounded else spent,
        }
    notes = []
    if plain:
        notes.append(
            "Feature release 'plain' (the paper's behaviour): 372 raw values per case reached the "
            "server, sealed in transit only; their epsilon is infinite and is not in the ledgers."
        )
    if proto.training.dp_training is None:
        notes.append(
            "Model updates were protected by secure aggregation only (no DP-SGD, no client-level "
            "DP): the aggregate model is not differentially private."
        )
    _write_epsilon_csv(ctx, curves)
    return {"total_epsilon": p.total_epsilon, "total_delta": p.total_delta,
            "per_site": per_site, "notes": notes, "epsilon_curves": curves,
            "egress": [row.to_json() for row in egress_table(proto)]}  # fmt: skip


def _write_epsilon_csv(ctx: StudyContext, curves: dict[str, list[dict[str, Any]]]) -> None:
    """RUNDIR/privacy/epsilon.csv: each site's spent epsilon after each charge (ledger order)."""
    lines = ["site,step,stage,release_id,epsilon"]
    for site, rows in curves.items():
        lines += [f"{site},{r['step']},{r['stage']},{r['release_id']},{r['epsilon']:.6g}"
                  for r in rows]  # fmt: skip
    atomic_write_bytes(ctx.paths.root / "privacy" / "epsilon.csv",
                       ("\n".join(lines) + "\n").encode(), mode=0o644)  # fmt: skip


def _overlays(ctx: StudyContext) -> list[dict[str, Any]]:
    """The evaluation stage's slices of a few test cases (synthetic federations only)."""
    from securefed.study.evaluation_stage import OVERLAYS

    path = ctx.paths.root / OVERLAYS
    return list(read_json(path)) if path.is_file() else []


def _wire(ctx: StudyContext, phases: dict[str, Any]) -> dict[str, Any]:
    """Bytes per site and round, measured from the sites' egress logs (securefed.study.wire)."""
    from securefed.study.wire import wire_summary
    from securefed.training.checkpoints import load_weights

    weights = load_weights(ctx.paths.root / phases["global"]["weights"])
    n_values = sum(int(w.size) for w in weights)
    out = wire_summary(ctx.paths.sites, ctx.loaded.protocol.training.aggregation, n_values)
    # training.trainable: the sites send only the trained arrays (the rest is the start model)
    from securefed.federation.task import default_task, sent_indices

    sent = sent_indices(default_task(), ctx.loaded.protocol.training)
    out["sent_values"] = n_values if sent is None else sum(int(weights[i].size) for i in sent)
    # the DP mechanism of the updates: "dp-sgd", "client-dp" (its vector is padded and masked
    # as int64) or None
    out["training_privacy"] = ctx.loaded.protocol.training.dp_training
    return out


def _sites(ctx: StudyContext, clusters: list[Assignment]) -> list[dict[str, Any]]:
    out = []
    for site in ctx.sites:
        mine = [r for r in clusters if r.partition_id == site.partition_id]
        out.append(
            {"site": site.id, "partition_id": site.partition_id,
             "train": sum(r.split == "train" for r in mine),
             "val": sum(r.split == "val" for r in mine),
             "test": sum(r.split == "test" for r in mine),
             "role": "unseen" if site.partition_id in ctx.held_out else "training"}
        )  # fmt: skip
    return out


def _scanner_of(ctx: StudyContext) -> dict[str, str] | None:
    if ctx.truth is None:
        return None
    import pandas as pd

    df = pd.read_csv(ctx.truth, dtype={"subject_id": str})
    if "scanner" not in df.columns:
        return None
    return dict(zip(df["subject_id"], df["scanner"].astype(str), strict=True))


def build_results(ctx: StudyContext) -> dict[str, Any]:
    """The results mapping (results.json) of a run whose earlier stages are complete."""
    proto = ctx.loaded.protocol
    state = read_json(ctx.paths.state)
    clusters = read_assignments(ctx.paths.clusters)
    scanner_of = _scanner_of(ctx)
    rows = read_case_rows(ctx.paths.per_case)
    seen = [r for r in rows if r["group"] == "test"]
    unseen = [r for r in rows if r["group"] == "unseen"]
    phases = read_json(ctx.paths.phases)
    curves = {"global": phases["global"]["history"]}
    fallbacks = []
    for c, info in phases["clusters"].items():
        if info["history"]:
            curves[f"cluster {c}"] = info["history"]
        if info["status"] != "finetuned":
            fallbacks.append({"cluster": c, "reason": f"{info['status']}: {info['reason']}"})
    warnings = []
    if phases["global"].get("stopped"):
        warnings.append(str(phases["global"]["stopped"]))
    warnings += [str(info["reason"]) for info in phases["clusters"].values()
                 if "stopped before round" in str(info.get("reason", ""))]  # fmt: skip
    if proto.release.mode == "plain":
        warnings.append(
            "Features were released in 'plain' mode: the server held every case's 372 raw "
            "radiomic values (epsilon = infinity), as in the paper."
        )
    return {
        "securefed_version": __version__,
        "created_at": state.get("created_at"),
        "protocol": {"name": proto.study.name, "sha256": ctx.loaded.sha256,
                     "mode": proto.study.mode, "release_mode": proto.release.mode,
                     "aggregation": proto.training.aggregation},
        "warnings": warnings,
        "data": {
            "cases": len(clusters),
            "sites": _sites(ctx, clusters),
            "excluded": [
                {"case": p.subject_id, "problem": str(p)} for p in ctx.federation.problems
            ],
        },
        "clustering": read_json(ctx.paths.clustering / "clustering.json"),
        "segmentation": {
            "methods": summarize_methods(seen, scanner_of),
            "unseen": summarize_methods(unseen, scanner_of) if unseen else {},
            "fallbacks": fallbacks,
            "global_best_round": phases["global"]["best_round"],
            "overlays": _overlays(ctx),
        },
        "training_curves": curves,
        "privacy": _privacy(ctx),
        "wire": _wire(ctx, phases),
        "timings": {k: v["seconds"] for k, v in state["completed"].items()},
    }  # fmt: skip


def run_report(ctx: StudyContext) -> dict[str, Any]:
    """Write results.json and report.html; returns the results."""
    results = build_results(ctx)
    write_json_atomic(ctx.paths.results, results)
    write_report(ctx.paths.root, results)
    return results
