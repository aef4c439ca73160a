"""Study stage 3, training: the federated phases on Flower (global FedAvg, then CFFL per cluster)
and the protocol's baselines (local, local finetuning; in simulation only and marked non-private:
centralized and CFFL-ideal).

Compute parity: FedAvg spends ``global_rounds x local_steps`` steps at each site; centralized gets
the same total number of steps on pooled data, and CFFL-ideal ``finetune_rounds x local_steps``
steps per site of its cluster, from the global model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from securefed.clustering.assignments import Assignment, read_assignments
from securefed.federation.config import SiteSettings
from securefed.federation.task import default_task
from securefed.fileio import write_json_atomic
from securefed.models import build_model
from securefed.study.cffl import run_cffl_phases
from securefed.study.context import StudyContext
from securefed.training import baselines as bl
from securefed.training.local import get_weights
from securefed.training.pretrained import initial_weights

__all__ = ["run_training", "site_data"]


def _steps_per_round(ctx: StudyContext, n_train: int) -> int:
    t = ctx.loaded.protocol.training
    if t.local_steps:
        return int(t.local_steps)
    return t.local_epochs * max(1, math.ceil(n_train / t.batch_size))


def site_data(ctx: StudyContext, rows: list[Assignment]) -> dict[str, bl.SiteData]:
    """Each training site's prepared train/val/test cases (site-local)."""
    out: dict[str, bl.SiteData] = {}
    for site in ctx.training_sites():
        mine = [r for r in rows if r.partition_id == site.partition_id]
        by = {s: [r.subject_id for r in mine if r.split == s] for s in ("train", "val", "test")}
        if not by["train"]:
            continue
        out[site.id] = bl.SiteData(
            ctx.prepared(by["train"]), ctx.prepared(by["val"]), ctx.prepared(by["test"])
        )
    return out


def _site_settings(ctx: StudyContext) -> list[SiteSettings]:
    return [
        SiteSettings(
            partition_id=s.partition_id,
            data_dir=str(ctx.data_root.resolve()),
            protocol=str(ctx.paths.protocol.resolve()),
            work_dir=str((ctx.paths.site(s.id) / "flower").resolve()),
            assignments=str(ctx.paths.clusters.resolve()),
            ledger_dir=str(ctx.paths.site(s.id).resolve()),  # one ledger per site, every stage
            partitions=str(ctx.federation.partition_file.resolve())
            if ctx.federation.partition_file is not None
            else "",
            site_config=str(ctx.site_configs[s.id].resolve()) if s.id in ctx.site_configs else "",
            device=ctx.device,
        )
        for s in ctx.training_sites()
    ]


def _curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for h in history:
        val = h.get("val") or {}
        score = val.get("dice_mean") if val.get("num_val") else None
        out.append({"round": h["round"], "val_dice": score, "seconds": h.get("seconds")})
    return out


def _relative(ctx: StudyContext, path: Path) -> str:
    return str(Path(path).resolve().relative_to(ctx.paths.root.resolve()))


def _rounds_bar(ctx: StudyContext) -> Callable[[str, int, int], None] | None:
    """The study's progress callback for federated rounds ("training global: rounds", ...)."""
    progress = ctx.progress
    if progress is None:
        return None
    return lambda phase, done, total: progress(f"training {phase} (rounds)", done, total)


def run_training(ctx: StudyContext) -> None:
    proto = ctx.loaded.protocol
    out = ctx.paths.training
    ctx.log(f"  federated phases: aggregation {proto.training.aggregation}")
    settings = _site_settings(ctx)
    if proto.training.aggregation == "bfv":
        from securefed.study.he_keys import deal_he_keys

        deal_he_keys(ctx, settings)
    phases = run_cffl_phases(ctx.loaded, settings, ctx.paths.clusters, out,
                             global_cache=ctx.global_model_cache,
                             progress=_rounds_bar(ctx))  # fmt: skip
    g = phases.global_result
    summary: dict[str, Any] = {
        "global": {
            "reused": phases.global_reused,  # copied from a shared cache (a sweep)
            "best_round": g.best_round,
            "best_score": g.best_score,
            "stopped": g.stopped,  # why it ended before its last round (privacy budgets)
            "lost_rounds": list(g.lost_rounds),  # interrupted rounds a resume did not rerun
            "weights": _relative(ctx, g.best_weights_path),
            "history": _curve(g.history),
        },
        "clusters": {},
    }
    for c, outcome in phases.clusters.items():
        summary["clusters"][str(c)] = {
            "status": outcome.status,
            "reason": outcome.reason,
            "sites": {str(k): v for k, v in outcome.sites.items()},
            "weights": _relative(ctx, outcome.weights_path),
            "history": _curve(outcome.result.history) if outcome.result else [],
        }
    write_json_atomic(ctx.paths.phases, summary)
    reused = " (the same global phase as an earlier study: reused)" if phases.global_reused else ""
    ctx.log(f"  global: best round {g.best_round} (pooled val Dice {g.best_score}){reused}")
    if g.stopped:
        ctx.log(f"  {g.stopped}")
    if g.lost_rounds:
        ctx.log(f"  global: round(s) {list(g.lost_rounds)} interrupted and not rerun (the sites "
                "train in each round once)")  # fmt: skip
    for c, info in summary["clusters"].items():
        ctx.log(f"  cluster {c}: {info['status']} ({info['reason']})")
    run_baselines(ctx, _full_state(ctx, g.best_weights))


def _full_state(ctx: StudyContext, weights: list[np.ndarray]) -> list[np.ndarray]:
    """Federated checkpoints hold each shared tensor once (see federation.task.unique_weights);
    the in-process baselines take the model's full state_dict order."""
    model = build_model(ctx.loaded.protocol.training)
    default_task().set_weights(model, weights)
    return get_weights(model)


def run_baselines(ctx: StudyContext, global_weights: list[np.ndarray]) -> None:
    """The protocol's baselines other than fedavg/cffl, each into training/baselines/<m>.json."""
    proto = ctx.loaded.protocol
    t, ev = proto.training, proto.evaluation
    wanted = [b for b in t.baselines if b not in ("fedavg", "cffl")]
    if not wanted:
        return
    rows = read_assignments(ctx.paths.clusters)
    sites = site_data(ctx, rows)
    per_round = {s: _steps_per_round(ctx, len(d.train)) for s, d in sites.items()}
    public = initial_weights(ctx.loaded)  # the protocol's public start, or None
    for i, method in enumerate(wanted):
        if ctx.progress is not None:
            ctx.progress("baselines", i, len(wanted))
        ctx.log(f"  baseline {method} ...")
        if method == "local":
            res = bl.local_baseline(sites, t, ev, seed=t.seed, init_weights=public)
        elif method == "local-finetune":
            res = bl.local_finetune_baseline(global_weights, sites, t, ev, seed=t.seed)
        elif method == "centralized":
            steps = t.global_rounds * sum(per_round.values())
            res = bl.centralized_baseline(
                sites, t, ev, steps=steps, seed=t.seed, init_weights=public
            )
        else:  # cffl-ideal
            cluster_of = {r.subject_id: r.cluster for r in rows}
            n_clusters = max(1, len(set(cluster_of.values())))
            steps = t.finetune_rounds * max(1, round(sum(per_round.values()) / n_clusters))
            res = bl.cffl_ideal_baseline(
                sites, cluster_of, t, ev, steps=steps, init_weights=global_weights, seed=t.seed
            )
        write_json_atomic(
            ctx.paths.baselines / f"{method}.json",
            {"method": method, "non_private": res.non_private, "cases": res.cases,
             "history": res.history},
        )  # fmt: skip
    if ctx.progress is not None:
        ctx.progress("baselines", len(wanted), len(wanted))
