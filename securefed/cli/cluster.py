"""`securefed cluster ...`: server-side clustering of the collected features (plain, local-dp) or
the simulated secure-aggregate clustering, with quality metrics and plots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from securefed.cli._common import console, handle_errors, info

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("cluster")(cluster)


@handle_errors
def cluster(
    features: Path = typer.Option(
        ..., "--features", help="Collected features.csv (or its folder)."
    ),
    protocol: Path = typer.Option(..., "--protocol", help="Study protocol TOML."),
    out: Path = typer.Option(..., "--out", help="Output folder (model, clusters.csv, plots)."),
    truth: Path | None = typer.Option(
        None, "--truth", help="truth.csv of a SYNTHETIC federation: adds ARI/NMI vs scanner."
    ),
    embedding: str = typer.Option("pca", help="2-D embedding for the plots: pca or tsne."),
    ledgers: Path | None = typer.Option(
        None, help="secure-aggregate simulation: folder of the site ledgers (default OUT/ledgers)."
    ),
    unsafe_seed: int | None = typer.Option(
        None,
        help="secure-aggregate simulation only: seeded, NOT private noise (needs the "
        "protocol's privacy.unsafe_seeded_noise).",
    ),
) -> None:
    """Cluster FEATURES as the protocol says; write the model, clusters.csv, quality.json, plots.

    plain / local-dp: the paper's pipeline fitted on train+val rows (local-dp: declared-bounds
    scaling). secure-aggregate: simulates the federated DP clustering with each partition's rows
    held by its site; the server-side outputs are the noised sums and the centroids."""
    import numpy as np

    from securefed.clustering import (
        ClusterModel,
        RadiomicsClusterer,
        quality_report,
        read_feature_table,
        read_truth,
        write_clusters_csv,
    )
    from securefed.clustering.model import write_atomic
    from securefed.errors import ConfigError
    from securefed.protocol import load_protocol

    if embedding not in ("pca", "tsne"):
        raise ConfigError(f"--embedding: use 'pca' or 'tsne', not {embedding!r}")
    loaded = load_protocol(protocol)
    proto = loaded.protocol
    table = read_feature_table(features)
    mode = proto.release.mode
    report: dict[str, Any] = {
        "protocol": loaded.sha256,
        "mode": mode,
        "n_cases": len(table.subject_ids),
        "n_fit_cases": int(table.fit_mask.sum()),
    }
    start = time.perf_counter()
    if mode == "secure-aggregate":
        from securefed.federated.secure_clustering import cluster_table_secure

        ledger_root = ledgers if ledgers is not None else out / "ledgers"
        labels, result = cluster_table_secure(table, loaded, ledger_root, unsafe_seed=unsafe_seed)
        plan = result.plan
        z = np.zeros((len(labels), plan.dimension))  # embedding of the centroid space, below
        report |= {
            "k": plan.k,
            "secure": {
                "algorithm": plan.algorithm,
                "dimension": plan.dimension,
                "rounds": list(plan.rounds),
                "noise_multiplier": plan.noise_multiplier,
                "epsilon": plan.epsilon,
                "delta": plan.delta,
                "messages_received": len(result.transcript),
                "ledgers": str(ledger_root),
            },
        }
        (out / "model").mkdir(parents=True, exist_ok=True)
        doc = {"format": "securefed-secure-centroids-v1", "centroids": result.centroids.tolist()}
        write_atomic(out / "model" / "centroids.json", json.dumps(doc).encode())
        from securefed.clustering.projection import projection_for

        projection = projection_for(loaded, table.columns)
        write_atomic(out / "model" / "projection.json", projection.to_json_bytes())
        cols = [table.columns.index(c) for c in projection.columns]
        z = projection(table.matrix[:, cols])
    else:
        lower = upper = None
        if proto.clustering.scaling == "declared-bounds":
            from securefed.privacy.bounds import load_pinned_bounds

            bounds = load_pinned_bounds(loaded).select(table.columns, "release.bounds")
            lower, upper = bounds.lower, bounds.upper
        est = RadiomicsClusterer.from_spec(proto.clustering, lower, upper)
        est.fit(table.matrix[table.fit_mask])
        model: ClusterModel = est.model_
        model.columns = list(table.columns)
        model.meta["protocol"] = loaded.sha256
        model.save(out / "model")
        labels = model.assign(table.matrix)
        z = model.embed(table.matrix)
        report |= {"k": model.k, "k_selection": est.k_selection, "k_scores": est.k_scores_}
    report["seconds"] = time.perf_counter() - start
    write_clusters_csv(out / "clusters.csv", table, labels)
    sizes = np.bincount(labels, minlength=int(report["k"])).tolist()
    report["cluster_sizes"] = sizes
    colourings: dict[str, Any] = {"institution": table.partition_ids.astype(str), "cluster": labels}
    if truth is not None:
        truth_cols = read_truth(truth, table.subject_ids)
        truth_cols.setdefault("institution", table.partition_ids.astype(str))
        report["quality"] = quality_report(labels, truth_cols)
        if "scanner" in truth_cols:
            colourings["scanner"] = truth_cols["scanner"]
    _plots(out / "plots", z, colourings, labels, table.partition_ids, embedding, proto)
    write_atomic(out / "quality.json", json.dumps(report, indent=2, default=str).encode())
    info(f"{len(labels)} cases in {report['k']} clusters ({mode}); sizes {sizes}")
    for name, q in report.get("quality", {}).items():
        console.print(f"ARI vs {name}: {q['ari']:.3f}  NMI: {q['nmi']:.3f}", highlight=False)
    info(f"wrote {out / 'clusters.csv'}, {out / 'quality.json'}, {out / 'plots'}")


def _plots(
    folder: Path,
    z: Any,
    colourings: dict[str, Any],
    labels: Any,
    parts: Any,
    method: str,
    proto: Any,
) -> None:
    from securefed.clustering.plots import plot_embedding, plot_table
    from securefed.clustering.quality import contingency

    plot_embedding(z, colourings, folder / "embedding.png", method, seed=proto.clustering.seed)
    rows, cols, counts = contingency(labels, parts.astype(str))
    plot_table(counts, rows, cols, folder / "cluster_x_institution.png", "cluster x institution")
    if "scanner" in colourings:
        rows, cols, counts = contingency(labels, colourings["scanner"])
        plot_table(counts, rows, cols, folder / "cluster_x_scanner.png", "cluster x scanner")
