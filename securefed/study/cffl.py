"""CFFL's federated phases: global FedAvg over every site with train cases, then one federation
per cluster, finetuning the best global model (the paper's method), in either Flower engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from securefed.clustering.assignments import cluster_ids, cluster_sites, read_assignments
from securefed.federation.config import SiteSettings
from securefed.federation.deployment import Deployment
from securefed.federation.phase import (
    Engine,
    PhaseResult,
    phase_config,
    read_phase_result,
    run_phase,
)
from securefed.federation.task import FlowerTask
from securefed.protocol import LoadedProtocol
from securefed.protocol.egress import training_egress

__all__ = ["ClusterOutcome", "StudyPhases", "he_context_path", "he_setup", "run_cffl_phases"]


def he_context_path(out_dir: Path) -> Path:
    """Where the server keeps the BFV aggregator context of a study's training (made by the key
    dealing, securefed.study.he_keys)."""
    return Path(out_dir) / "he" / "aggregator.ctx"


def he_setup(loaded: LoadedProtocol, out_dir: Path, sites: dict[int, int]) -> dict[str, Any]:
    """The bfv arguments of every phase: the aggregator context and the study's one decryptor
    (the protocol's, else the lowest training partition); empty for other aggregations."""
    if loaded.protocol.training.aggregation != "bfv":
        return {}
    decryptor = loaded.protocol.decryptor_partition()
    return {
        "he_context": he_context_path(out_dir),
        "decryptor": min(sites) if decryptor is None else decryptor,
    }


@dataclass
class ClusterOutcome:
    """A cluster's model: finetuned by its own federation, or the global model (reported why)."""

    cluster: int
    sites: dict[int, int | None]  # partition id -> train cases of it (None: not sent)
    status: Literal["finetuned", "fallback-global"]
    reason: str
    weights_path: Path
    result: PhaseResult | None = None


@dataclass
class StudyPhases:
    global_result: PhaseResult
    clusters: dict[int, ClusterOutcome] = field(default_factory=dict)
    global_reused: bool = False  # the global phase was copied from the shared cache


def run_cffl_phases(
    loaded: LoadedProtocol,
    sites: Sequence[SiteSettings],
    assignments: Path,
    out_dir: Path,
    *,
    engine: Engine = "simulation",
    task: FlowerTask | None = None,
    deployment: Deployment | None = None,
    clusters: Sequence[int] | None = None,
    global_cache: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> StudyPhases:
    """CFFL's federated phases: global FedAvg over every site with train cases, then for each
    cluster a federation of the sites holding that cluster's train cases (every site, under the
    ``all-sites`` membership of securefed.protocol.egress), starting from the best global model.
    A cluster with fewer sites than ``training.min_sites_per_aggregate`` (or than 2 under
    SecAgg+) keeps the global model, and the outcome says so. ``global_cache`` (simulation
    only): a folder of global phases shared between studies (securefed.study.global_cache).
    ``progress(phase, rounds done, rounds)``: each phase's rounds as they complete."""
    t = loaded.protocol.training
    egress = training_egress(loaded.protocol)
    held_out = set(loaded.protocol.data.held_out_partitions)
    out_dir = Path(out_dir)
    own = {s.partition_id for s in sites}

    def eligible(counts: dict[int, int]) -> dict[int, int]:
        return {p: n for p, n in counts.items() if p not in held_out and p in own}

    rows = read_assignments(assignments)
    global_sites = eligible(cluster_sites(rows, None))
    he = he_setup(loaded, out_dir, global_sites)
    g_cfg = phase_config(loaded, out_dir=out_dir / "global", sites=global_sites,
                         assignments=assignments, **he)  # fmt: skip
    started_here = deployment is not None and engine == "deployment" and not deployment.processes
    try:
        if started_here and deployment is not None:
            deployment.start()
        key = None
        if global_cache is not None and engine == "simulation" and sites:
            from securefed.study.global_cache import global_phase_key

            key = global_phase_key(loaded, g_cfg, assignments, sites[0].data_dir, task)
        reused = False
        if key is not None and global_cache is not None:
            from securefed.study.global_cache import restore_global_phase

            reused = restore_global_phase(global_cache, key, out_dir / "global")
        if reused:
            global_result = read_phase_result(g_cfg)
        else:
            global_result = run_phase(g_cfg, sites, engine=engine, task=task,
                                      deployment=deployment, progress=progress)  # fmt: skip
            if key is not None and global_cache is not None:
                from securefed.study.global_cache import store_global_phase

                store_global_phase(global_cache, key, out_dir / "global")
        study = StudyPhases(global_result=global_result, global_reused=reused)
        floor = max(t.min_sites_per_aggregate, 2 if t.aggregation != "fedavg" else 1)
        ids = clusters if clusters is not None else cluster_ids(rows)
        for cluster in ids:
            members: dict[int, int | None] = (
                dict.fromkeys(global_sites) if egress.membership == "all-sites"
                else dict(eligible(cluster_sites(rows, cluster)))
            )  # fmt: skip
            if len(members) < floor:
                study.clusters[cluster] = ClusterOutcome(
                    cluster=cluster, sites=members, status="fallback-global",
                    reason=f"{len(members)} site(s) hold train cases of this cluster; "
                    f"at least {floor} are needed per aggregate",
                    weights_path=global_result.best_weights_path,
                )  # fmt: skip
                continue
            c_cfg = phase_config(
                loaded, out_dir=out_dir / f"cluster-{cluster}", sites=members,
                assignments=assignments, cluster=cluster,
                initial_weights=global_result.best_weights_path, **he,
            )  # fmt: skip
            result = run_phase(c_cfg, sites, engine=engine, task=task, deployment=deployment,
                               progress=progress)  # fmt: skip
            study.clusters[cluster] = ClusterOutcome(
                cluster=cluster, sites=members, status="finetuned",
                reason=f"best round {result.best_round} of {c_cfg.rounds}"
                + (f"; {result.stopped}" if result.stopped else ""),
                weights_path=result.best_weights_path, result=result,
            )  # fmt: skip
        return study
    finally:
        if started_here and deployment is not None:
            deployment.stop()
