"""Study stage 3: the federated phases on Flower (global FedAvg, then CFFL per cluster) and the
protocol's baselines (local, local finetuning; in simulation only and marked non-private:
centralized and CFFL-ideal).

Compute parity: FedAvg spends ``global_rounds x local_steps`` steps at each site; centralized gets
the same total number of steps on pooled data, and CFFL-ideal ``finetune_rounds x local_steps``
steps per site of its cluster, from the global model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from securefed.report import write_json_atomic

__all__ = ["run_training", "site_data", "prepared"]


def _steps_per_round(ctx: Any, n_train: int) -> int:
    t = ctx.loaded.protocol.training
    if t.local_steps:
        return int(t.local_steps)
    return t.local_epochs * max(1, math.ceil(n_train / t.batch_size))


def prepared(ctx: Any, subject_ids: list[str]) -> list[dict[str, Any]]:
    """Preprocessed cases (cached in-process by securefed.federated.local)."""
    from securefed.federated.local import prepare_cases

    cases = [ctx.federation.cases[s] for s in subject_ids]
    return prepare_cases(cases, ctx.loaded.protocol.training) if cases else []


def site_data(ctx: Any) -> dict[str, Any]:
    """Each training site's prepared train/val/test cases (site-local)."""
    from securefed.federated.baselines import SiteData
    from securefed.federated.study import read_clusters

    rows = read_clusters(ctx.paths.clusters)
    out: dict[str, Any] = {}
    for site in ctx.training_sites():
        mine = [r for r in rows if r["partition_id"] == site.partition_id]
        by = {
            s: [r["subject_id"] for r in mine if r["split"] == s] for s in ("train", "val", "test")
        }
        if not by["train"]:
            continue
        out[site.id] = SiteData(prepared(ctx, by["train"]), prepared(ctx, by["val"]),
                                prepared(ctx, by["test"]))  # fmt: skip
    return out


def _site_settings(ctx: Any) -> list[Any]:
    from securefed.federated.flower.config import SiteSettings

    return [
        SiteSettings(
            partition_id=s.partition_id,
            data_dir=str(ctx.data_root.resolve()),
            protocol=str(ctx.paths.protocol.resolve()),
            work_dir=str((ctx.paths.site(s.id) / "flower").resolve()),
            assignments=str(ctx.paths.clusters.resolve()),
            ledger_dir=str(ctx.paths.site(s.id).resolve()),  # one ledger per site, every stage
        )
        for s in ctx.training_sites()
    ]


def run_training(ctx: Any) -> None:
    from securefed.federated.engine import run_study_phases

    proto = ctx.loaded.protocol
    out = ctx.paths.training
    ctx.log(f"  federated phases: aggregation {proto.training.aggregation}")
    phases = run_study_phases(ctx.loaded, _site_settings(ctx), ctx.paths.clusters, out)
    g = phases.global_result
    summary: dict[str, Any] = {
        "global": {"best_round": g.best_round, "best_score": g.best_score,
                   "weights": str(g.best_weights_path.relative_to(ctx.paths.root)),
                   "history": _curve(g.history)},
        "clusters": {},
    }  # fmt: skip
    for c, outcome in phases.clusters.items():
        summary["clusters"][str(c)] = {
            "status": outcome.status,
            "reason": outcome.reason,
            "sites": {str(k): v for k, v in outcome.sites.items()},
            "weights": str(
                Path(outcome.weights_path).resolve().relative_to(ctx.paths.root.resolve())
            ),
            "history": _curve(outcome.result.history) if outcome.result else [],
        }
    write_json_atomic(out / "phases.json", summary)
    ctx.log(f"  global: best round {g.best_round} (pooled val Dice {g.best_score})")
    for c, info in summary["clusters"].items():
        ctx.log(f"  cluster {c}: {info['status']} ({info['reason']})")
    _baselines(ctx, _full_state(ctx, g.best_weights))


def _full_state(ctx: Any, weights: list[Any]) -> list[Any]:
    """Federated checkpoints hold each shared tensor once (see flower.task.unique_weights); the
    in-process baselines take the model's full state_dict order."""
    from securefed.federated.flower.task import default_task
    from securefed.federated.local import get_weights
    from securefed.models import build_model

    model = build_model(ctx.loaded.protocol.training)
    default_task().set_weights(model, weights)
    return get_weights(model)


def _curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"round": h["round"], "val_dice": (h.get("val") or {}).get("dice_mean")
         if (h.get("val") or {}).get("num_val") else None, "seconds": h.get("seconds")}
        for h in history
    ]  # fmt: skip


def _baselines(ctx: Any, global_weights: list[Any]) -> None:
    from securefed.federated import baselines as bl
    from securefed.federated.study import read_clusters

    proto = ctx.loaded.protocol
    t, ev = proto.training, proto.evaluation
    wanted = [b for b in t.baselines if b not in ("fedavg", "cffl")]
    if not wanted:
        return
    sites = site_data(ctx)
    per_round = {s: _steps_per_round(ctx, len(d.train)) for s, d in sites.items()}
    out = ctx.paths.training / "baselines"
    for method in wanted:
        ctx.log(f"  baseline {method} ...")
        if method == "local":
            res = bl.local_baseline(sites, t, ev, seed=t.seed)
        elif method == "local-finetune":
            res = bl.local_finetune_baseline(global_weights, sites, t, ev, seed=t.seed)
        elif method == "centralized":
            steps = t.global_rounds * sum(per_round.values())
            res = bl.centralized_baseline(sites, t, ev, steps=steps, seed=t.seed)
        else:  # cffl-ideal
            cluster_of = {r["subject_id"]: r["cluster"] for r in read_clusters(ctx.paths.clusters)}
            n_clusters = max(1, len(set(cluster_of.values())))
            steps = t.finetune_rounds * max(1, round(sum(per_round.values()) / n_clusters))
            res = bl.cffl_ideal_baseline(
                sites, cluster_of, t, ev, steps=steps, init_weights=global_weights, seed=t.seed
            )
        write_json_atomic(
            out / f"{method}.json",
            {"method": method, "non_private": res.non_private, "cases": res.cases,
             "history": res.history},
        )  # fmt: skip
