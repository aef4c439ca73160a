"""The stages of :func:`securefed.federated.study.run_study` (simulation: every role on one
machine, each with its own folder, keys and ledger; only sealed envelopes cross between them)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import ClusteringError, NoCasesError
from securefed.protocol import LoadedProtocol
from securefed.protocol.schema import SiteSpec

__all__ = [
    "StudyContext",
    "features_stage",
    "clustering_stage",
    "training_stage",
    "evaluation_stage",
    "report_stage",
]

Log = Callable[[str], None]


@dataclass
class StudyContext:
    """Everything the stages share. Built afresh on every (re)start from the data and RUNDIR."""

    loaded: LoadedProtocol
    data_root: Path
    paths: Any  # StudyPaths
    federation: Any
    splits: dict[str, str]
    sites: tuple[SiteSpec, ...]
    truth: Path | None
    workers: int
    log: Log
    extra: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str, int, int], None] | None = None

    @classmethod
    def build(
        cls,
        loaded: LoadedProtocol,
        data_root: Path,
        paths: Any,
        *,
        truth: Path | None,
        workers: int,
        log: Log,
    ) -> StudyContext:
        from securefed.data import load_federation

        proto = loaded.protocol
        fed = load_federation(data_root, partitioning=proto.data.partitioning, check="header")
        if not fed.cases:
            raise NoCasesError(f"{data_root}: no usable case ({fed.summary()})")
        splits = fed.splits(
            seed=proto.data.split_seed,
            test_fraction=proto.data.test_fraction,
            val_fraction=proto.data.val_fraction,
        )
        sites = proto.resolve_sites(sorted(set(fed.partition_of.values())))
        if truth is not None and not Path(truth).is_file():
            raise NoCasesError(f"--truth {truth}: file not found")
        return cls(loaded, data_root, paths, fed, splits, sites, truth, workers, log)

    # -- helpers ------------------------------------------------------------------------------
    @property
    def held_out(self) -> set[int]:
        return set(self.loaded.protocol.data.held_out_partitions)

    def training_sites(self) -> list[SiteSpec]:
        return [s for s in self.sites if s.partition_id not in self.held_out]

    def site_cases(self, site: SiteSpec) -> list[Any]:
        fed = self.federation
        return [c for s, c in sorted(fed.cases.items()) if fed.partition_of[s] == site.partition_id]

    def unsafe_seed(self) -> int | None:
        p = self.loaded.protocol.privacy
        return (p.unsafe_noise_seed or 0) if p.unsafe_seeded_noise else None


# -- keys (simulation: every party's keys are made in RUNDIR/keys) --------------------------------
def _keys(ctx: StudyContext) -> dict[str, Any]:
    from securefed.crypto import (
        generate_keys,
        load_private_keys,
        load_public_keys,
        private_key_path,
        public_key_path,
        write_keys,
    )

    folder = ctx.paths.keys
    parties = [("server", ctx.loaded.protocol.server.id)] + [("site", s.id) for s in ctx.sites]
    out: dict[str, Any] = {"private": {}, "public": {}}
    for role, pid in parties:
        if not private_key_path(folder, pid).exists():
            write_keys(generate_keys(role, pid), folder)  # type: ignore[arg-type]
        out["private"][pid] = load_private_keys(private_key_path(folder, pid), role=role)  # type: ignore[arg-type]
        out["public"][pid] = load_public_keys(public_key_path(folder, pid), role=role)  # type: ignore[arg-type]
    return out


# -- 1. features -----------------------------------------------------------------------------------
def features_stage(ctx: StudyContext) -> None:
    """Sites extract (site-local), protect and seal; the server collects (plain / local-dp)."""
    from securefed.federated.collect import collect_features
    from securefed.federated.release import release_site_features
    from securefed.radiomics import FeatureTable, extract_features, save_table

    proto = ctx.loaded.protocol
    fed = ctx.federation
    cases = [c for _, c in sorted(fed.cases.items())]
    ctx.log(f"  {len(cases)} case(s) at {len(ctx.sites)} site(s); {fed.summary()}")
    extraction = extract_features(
        cases,
        proto.radiomics,
        cache_dir=ctx.paths.root / "cache" / "radiomics",
        partition_of=fed.partition_of,
        split_of=ctx.splits,
        workers=ctx.workers,
        on_error="exclude",
        progress=(
            None
            if ctx.progress is None
            else lambda stage, done, total, _sid: ctx.progress(f"radiomics ({stage})", done, total)  # type: ignore[misc]
        ),
    )
    for sid, why in sorted(extraction.excluded.items()):
        ctx.log(f"  excluded {sid}: {why}")
    table = extraction.table
    settings = proto.radiomics.model_dump(mode="json")
    keys = _keys(ctx)
    server = proto.server.id
    inbox = ctx.paths.server / "inbox"
    for site in ctx.sites:
        mask = np.array([p == site.partition_id for p in table.partition_ids])
        if not mask.any():
            ctx.log(f"  {site.id}: no extractable case")
            continue
        own = FeatureTable(
            [s for s, m in zip(table.subject_ids, mask, strict=True) if m],
            [p for p, m in zip(table.partition_ids, mask, strict=True) if m],
            [s for s, m in zip(table.splits, mask, strict=True) if m],
            table.columns,
            table.values[mask],
        )
        featdir = ctx.paths.site(site.id) / "features"
        save_table(own, featdir, {"settings": settings, "excluded": extraction.excluded})
        if proto.release.mode == "secure-aggregate" or site.partition_id in ctx.held_out:
            continue  # no per-case release (secure mode) / unseen institution: nothing sent
        release_site_features(
            featdir,
            ctx.loaded,
            keys["private"][site.id],
            keys["public"][server],
            inbox,
            ctx.paths.site(site.id),
            unsafe_seed=ctx.unsafe_seed(),
        )
    if proto.release.mode != "secure-aggregate":
        collected = collect_features(
            inbox,
            ctx.loaded,
            keys["private"][server],
            ctx.paths.server / "features",
            ctx.paths.server,
            site_public_keys=tuple(keys["public"][s.id] for s in ctx.sites),
        )
        ctx.log(
            f"  server collected {len(collected.subject_ids)} case(s) x "
            f"{len(collected.columns)} values from {len(collected.senders)} site(s) "
            f"(release mode {proto.release.mode})"
        )


def _site_table(ctx: StudyContext, site: SiteSpec) -> Any:
    from securefed.radiomics import load_table

    featdir = ctx.paths.site(site.id) / "features"
    if not (featdir / "features.csv").exists():
        return None
    return load_table(featdir)[0]


# -- 2. clustering ---------------------------------------------------------------------------------
def clustering_stage(ctx: StudyContext) -> None:
    proto = ctx.loaded.protocol
    out = ctx.paths.server / "clustering"
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"algorithm": proto.clustering.algorithm, "mode": proto.release.mode}
    if proto.release.mode == "secure-aggregate":
        rows, report = _secure_clustering(ctx, out, report)
    else:
        rows, report = _paper_clustering(ctx, out, report)
    rows.sort(key=lambda r: r["subject_id"])
    _write_clusters(ctx.paths.clusters, rows)
    labels = np.array([r["cluster"] for r in rows])
    report["cluster_sizes"] = {str(c): int((labels == c).sum()) for c in sorted(set(labels))}
    report["cluster_sites"] = {
        str(c): sorted({f"site-{r['partition_id']}" for r in rows if r["cluster"] == c})
        for c in sorted(set(labels))
    }
    if ctx.truth is not None:
        report.update(_quality(ctx, rows, out))
    from securefed.report import write_json_atomic

    write_json_atomic(out / "clustering.json", report)
    ctx.log(f"  k = {report['k']}; cluster sizes {report['cluster_sizes']}")


def _write_clusters(path: Path, rows: list[dict[str, Any]]) -> None:
    from securefed.fileio import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["subject_id", "partition_id", "split", "cluster"])
    for r in rows:
        writer.writerow([r["subject_id"], r["partition_id"], r["split"], r["cluster"]])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _paper_clustering(
    ctx: StudyContext, out: Path, report: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from securefed.clustering import RadiomicsClusterer, read_feature_table
    from securefed.federated.model_exchange import open_cluster_model, seal_cluster_model
    from securefed.privacy.release import release_space
    from securefed.transport import SendCounter

    proto = ctx.loaded.protocol
    table = read_feature_table(ctx.paths.server / "features")
    lower = upper = None
    if proto.clustering.scaling == "declared-bounds":
        from securefed.privacy.release import released_bounds

        bounds = released_bounds(ctx.loaded).select(table.columns, "release.bounds")
        lower, upper = bounds.lower, bounds.upper
    fit_rows = int(table.fit_mask.sum())
    if fit_rows < 2:
        raise ClusteringError(f"only {fit_rows} train/val case(s) were collected: cannot cluster")
    est = RadiomicsClusterer.from_spec(proto.clustering, lower, upper)
    est.fit(table.matrix[table.fit_mask])
    model = est.model_
    model.columns = list(table.columns)
    model.meta["protocol"] = ctx.loaded.sha256
    model.save(out / "model")
    report.update(
        {
            "k": model.k,
            "k_selection": proto.clustering.k_selection,
            "selection": {"criterion": proto.clustering.k_selection,
                          "scores": {str(k): v for k, v in est.k_scores_.items()}},
            "fit_cases": fit_rows,
        }
    )  # fmt: skip
    # Server -> each site: the model, sealed. Each site assigns its own cases locally.
    keys = _keys(ctx)
    server_id = proto.server.id
    counters = SendCounter(ctx.paths.server / "counters")
    rows: list[dict[str, Any]] = []
    embed_rows: list[np.ndarray] = []
    for site in ctx.sites:
        table_s = _site_table(ctx, site)
        if table_s is None:
            continue
        envelope = seal_cluster_model(
            model,
            server_keys=keys["private"][server_id],
            site=keys["public"][site.id],
            loaded=ctx.loaded,
            counters=counters,
        )
        site_model = open_cluster_model(
            envelope,
            site_keys=keys["private"][site.id],
            loaded=ctx.loaded,
            state_dir=ctx.paths.site(site.id),
            server_public=(keys["public"][server_id],),
        )
        x = release_space(ctx.loaded, tuple(table_s.columns), np.asarray(table_s.values))
        labels = site_model.assign(x)
        embed_rows.append(site_model.embed(x))
        for sid, split, lab in zip(table_s.subject_ids, table_s.splits, labels, strict=True):
            rows.append(
                {"subject_id": sid, "partition_id": site.partition_id, "split": split,
                 "cluster": int(lab)}
            )  # fmt: skip
    ctx.extra["embedding"] = np.vstack(embed_rows) if embed_rows else None
    return rows, report


def _secure_clustering(
    ctx: StudyContext, out: Path, report: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from securefed.clustering.io import FeatureTable as ClusterTable
    from securefed.clustering.projection import projection_for
    from securefed.federated.secure_clustering import cluster_table_secure

    ids: list[str] = []
    parts: list[int] = []
    splits: list[str] = []
    blocks: list[np.ndarray] = []
    columns: list[str] = []
    held: list[tuple[SiteSpec, Any]] = []
    for site in ctx.sites:
        t = _site_table(ctx, site)
        if t is None:
            continue
        if site.partition_id in ctx.held_out:
            held.append((site, t))
            continue
        ids += list(t.subject_ids)
        parts += list(t.partition_ids)
        splits += list(t.splits)
        blocks.append(np.asarray(t.values))
        columns = list(t.columns)
    # The driver stacks the rows only to hand each site its own (site-local) points; see
    # cluster_table_secure: each partition's rows stay with its site.
    table = ClusterTable(ids, np.array(parts), np.array(splits), columns, np.vstack(blocks))
    labels, result = cluster_table_secure(
        table, ctx.loaded, ctx.paths.root / "sites", unsafe_seed=ctx.unsafe_seed()
    )
    rows = [
        {"subject_id": s, "partition_id": int(p), "split": str(sp), "cluster": int(c)}
        for s, p, sp, c in zip(ids, parts, splits, labels, strict=True)
    ]
    projection = projection_for(ctx.loaded, columns)
    cols = [columns.index(c) for c in projection.columns]
    for site, t in held:  # unseen institutions: assign locally to the public centroids
        z = projection(np.asarray(t.values)[:, cols])
        lab = np.argmin(((z[:, None, :] - result.centroids[None]) ** 2).sum(-1), axis=1)
        rows += [
            {"subject_id": s, "partition_id": site.partition_id, "split": sp, "cluster": int(c)}
            for s, sp, c in zip(t.subject_ids, t.splits, lab, strict=True)
        ]
    plan = result.plan
    from securefed.report import write_json_atomic

    write_json_atomic(out / "model" / "centroids.json", {"centroids": result.centroids})
    report.update(
        {
            "k": int(plan.k),
            "k_selection": "secure",
            "secure": {
                "algorithm": plan.algorithm,
                "dimension": plan.dimension,
                "noise_multiplier": plan.noise_multiplier,
                "epsilon": plan.epsilon,
                "delta": plan.delta,
                "messages_received_by_server": len(result.transcript),
                "seconds": result.seconds,
            },
        }
    )
    ctx.extra["embedding"] = None
    return rows, report


def _quality(ctx: StudyContext, rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Agreement with the synthetic truth (simulation only; truth is never used to fit)."""
    from securefed.clustering import quality_report, read_truth
    from securefed.clustering.plots import plot_embedding, plot_table
    from securefed.clustering.quality import contingency

    ids = [r["subject_id"] for r in rows]
    labels = np.array([r["cluster"] for r in rows])
    truth = read_truth(ctx.truth, ids)  # type: ignore[arg-type]
    truth.setdefault("institution", np.array([str(r["partition_id"]) for r in rows]))
    quality = quality_report(labels, truth)
    summary = {}
    for name, q in quality.items():
        summary[f"ari_{name}"] = q["ari"]
        summary[f"nmi_{name}"] = q["nmi"]
    plots: list[str] = []
    plot_dir = ctx.paths.root / "plots"
    if "scanner" in truth:
        cl, gr, counts = contingency(labels, truth["scanner"])
        plot_table(counts, cl, gr, plot_dir / "cluster_x_scanner.png", "cluster x scanner")
        plots.append("plots/cluster_x_scanner.png")
    cl, gr, counts = contingency(labels, truth["institution"])
    plot_table(counts, cl, gr, plot_dir / "cluster_x_institution.png", "cluster x institution")
    plots.append("plots/cluster_x_institution.png")
    embedding = ctx.extra.get("embedding")
    if embedding is not None and len(embedding) == len(labels):
        colours = {"cluster": labels, "institution": truth["institution"]}
        if "scanner" in truth:
            colours["scanner"] = truth["scanner"]
        plot_embedding(embedding, colours, plot_dir / "embedding.png", "pca", seed=0)
        plots.append("plots/embedding.png")
    return {"quality": summary, "quality_tables": quality, "plots": plots}


# -- 3. training -----------------------------------------------------------------------------------
def training_stage(ctx: StudyContext) -> None:
    from securefed.federated.training_stage import run_training

    run_training(ctx)


# -- 4. evaluation ---------------------------------------------------------------------------------
def evaluation_stage(ctx: StudyContext) -> None:
    from securefed.federated.evaluation_stage import run_evaluation

    run_evaluation(ctx)


# -- 5. report -------------------------------------------------------------------------------------
def report_stage(ctx: StudyContext) -> None:
    from securefed.federated.results import build_results

    build_results(ctx)
