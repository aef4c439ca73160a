"""Study stage 2, clustering: plain / local-dp, the server fits the paper's pipeline on the
collected features (:func:`securefed.server.cluster_model.fit_cluster_model`) and seals the model
to every site, and each site assigns its own cases locally; secure-aggregate, the federated DP
clustering (:mod:`securefed.study.secure_clustering`). Writes clusters.csv and clustering.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.clustering.agreement import agreement_report
from securefed.clustering.assignments import Assignment, write_assignments
from securefed.clustering.fixed_projection import projection_for
from securefed.clustering.io import read_feature_table
from securefed.fileio import write_json_atomic
from securefed.protocol.egress import training_egress
from securefed.radiomics.storage import load_table
from securefed.radiomics.table import FeatureTable
from securefed.server.cluster_model import fit_cluster_model, seal_for_sites
from securefed.site.assign import assign_own_cases
from securefed.study.context import StudyContext
from securefed.study.secure_clustering import (
    cluster_table_secure,
    secure_summary,
    write_centroids,
)
from securefed.transport import SendCounter

__all__ = ["ClusteringOutcome", "run_clustering"]


@dataclass(frozen=True)
class ClusteringOutcome:
    """The stage's artefacts: every case's assignment, the JSON summary, and (plain / local-dp)
    the embedded coordinates for the plots."""

    assignments: list[Assignment]
    report: dict[str, Any]
    embedding: np.ndarray | None


def _site_table(ctx: StudyContext, site_id: str) -> FeatureTable | None:
    featdir = ctx.paths.site_features(site_id)
    if not (featdir / "features.csv").exists():
        return None
    return load_table(featdir)[0]


def _paper_clustering(ctx: StudyContext) -> ClusteringOutcome:
    fitted = fit_cluster_model(read_feature_table(ctx.paths.server_features), ctx.loaded)
    fitted.model.save(ctx.paths.clustering / "model")
    keys = ctx.keys()
    server_id = ctx.loaded.protocol.server.id
    tables = {s.id: t for s in ctx.sites if (t := _site_table(ctx, s.id)) is not None}
    # Server -> each site: the model, sealed. Each site assigns its own cases locally.
    envelopes = seal_for_sites(
        fitted.model,
        server_keys=keys.private[server_id],
        sites={sid: keys.public[sid] for sid in tables},
        loaded=ctx.loaded,
        counters=SendCounter(ctx.paths.server / "counters"),
    )
    rows: list[Assignment] = []
    embedded: list[np.ndarray] = []
    # A training site of a local-dp protocol assigns on its noised release (egress "released");
    # a held-out institution trains nowhere and routes its cases on its own vectors.
    on_release = (
        ctx.loaded.protocol.release.mode == "local-dp"
        and training_egress(ctx.loaded.protocol).membership == "released"
    )
    for site in ctx.sites:
        if site.id not in tables:
            continue
        table = tables[site.id]
        assigned = assign_own_cases(
            envelopes[site.id],
            table,
            site_keys=keys.private[site.id],
            accepted=ctx.accepted_by(site.id),
            state_dir=ctx.paths.site(site.id),
            server_public=(keys.public[server_id],),
            on_release=on_release and site.partition_id not in ctx.held_out,
            patients=ctx.federation.patient_of,
        )
        embedded.append(assigned.embedding)
        rows += [
            Assignment(sid, site.partition_id, split, int(lab))
            for sid, split, lab in zip(
                table.subject_ids, table.splits, assigned.labels, strict=True
            )
        ]
    report = {"mode": ctx.loaded.protocol.release.mode, **fitted.summary()}
    return ClusteringOutcome(rows, report, np.vstack(embedded) if embedded else None)


def _secure_clustering(ctx: StudyContext) -> ClusteringOutcome:
    tables = [t for s in ctx.sites if (t := _site_table(ctx, s.id)) is not None]
    # The driver stacks the rows only to hand each site its own (site-local) points; see
    # cluster_table_secure: each partition's rows stay with its site.
    table = FeatureTable(
        [sid for t in tables for sid in t.subject_ids],
        [p for t in tables for p in t.partition_ids],
        [sp for t in tables for sp in t.splits],
        tables[0].columns,
        np.vstack([t.values for t in tables]),
    )
    labels, result = cluster_table_secure(
        table, ctx.loaded, ctx.paths.sites, held_out=ctx.held_out,
        unsafe_seed=ctx.unsafe_seed(), patients=ctx.federation.patient_of,
    )  # fmt: skip
    rows = [
        Assignment(sid, int(p), sp, int(c))
        for sid, p, sp, c in zip(
            table.subject_ids, table.partition_ids, table.splits, labels, strict=True
        )
    ]
    projection = projection_for(ctx.loaded, table.columns)
    write_centroids(ctx.paths.clustering / "model", result, projection.to_json_bytes())
    report = {
        "mode": "secure-aggregate",
        "k": int(result.plan.k),
        "k_selection": "secure",
        "secure": secure_summary(result),
    }
    return ClusteringOutcome(rows, report, None)


def run_clustering(ctx: StudyContext) -> ClusteringOutcome:
    proto = ctx.loaded.protocol
    outcome = (
        _secure_clustering(ctx)
        if proto.release.mode == "secure-aggregate"
        else _paper_clustering(ctx)
    )
    rows = sorted(outcome.assignments, key=lambda r: r.subject_id)
    write_assignments(ctx.paths.clusters, rows)
    report = {"algorithm": proto.clustering.algorithm, **outcome.report}
    labels = np.array([r.cluster for r in rows])
    report["cluster_sizes"] = {str(c): int((labels == c).sum()) for c in sorted(set(labels))}
    report["cluster_sites"] = {
        str(c): sorted({ctx.site_of(r.partition_id) for r in rows if r.cluster == c})
        for c in sorted(set(labels))
    }
    # agreement with truth.csv's groups, or with the institutions alone (real data)
    order = {r.subject_id: i for i, r in enumerate(outcome.assignments)}
    embedding = outcome.embedding
    if embedding is not None:
        embedding = embedding[[order[r.subject_id] for r in rows]]
    report.update(
        agreement_report(
            [r.subject_id for r in rows],
            labels,
            np.array([r.partition_id for r in rows]),
            ctx.paths.plots,
            truth=ctx.truth,
            embedding=embedding,
            seed=proto.clustering.seed,
            plot_prefix="plots/",
        )
    )
    write_json_atomic(ctx.paths.clustering / "clustering.json", report)
    ctx.log(f"  k = {report['k']}; cluster sizes {report['cluster_sizes']}")
    return outcome
