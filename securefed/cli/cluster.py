"""`securefed cluster ...`: server-side clustering of the collected features (plain, local-dp) or
the simulated secure-aggregate clustering, with quality metrics and plots."""

from __future__ import annotations

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

    from securefed.clustering.agreement import agreement_report
    from securefed.clustering.assignments import Assignment, write_assignments
    from securefed.clustering.fixed_projection import projection_for
    from securefed.clustering.io import read_feature_table
    from securefed.errors import ConfigError
    from securefed.fileio import write_json_atomic
    from securefed.protocol import load_protocol
    from securefed.server.cluster_model import fit_cluster_model
    from securefed.study.secure_clustering import cluster_table_secure, write_centroids

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
        ledger_root = ledgers if ledgers is not None else out / "ledgers"
        labels, result = cluster_table_secure(
            table, loaded, ledger_root, held_out=proto.data.held_out_partitions,
            unsafe_seed=unsafe_seed,
        )  # fmt: skip
        plan = result.plan
        projection = projection_for(loaded, table.columns)
        write_centroids(out / "model", result, projection.to_json_bytes())
        cols = [table.columns.index(c) for c in projection.columns]
        z = projection(np.asarray(table.values)[:, cols])
        report |= {
            "k": plan.k,
            "k_selection": "secure",
            "secure": {
                "algorithm": plan.algorithm,
                "dimension": plan.dimension,
                "rounds": list(plan.rounds),
                "noise_multiplier": plan.noise_multiplier,
                "epsilon": plan.epsilon,
                "delta": plan.delta,
                "messages_received_by_server": len(result.transcript),
                "ledgers": str(ledger_root),
            },
        }
    else:
        fitted = fit_cluster_model(table, loaded)
        fitted.model.save(out / "model")
        labels = fitted.model.assign(table.values)
        z = fitted.model.embed(table.values)
        report |= fitted.summary()
    report["seconds"] = time.perf_counter() - start
    write_assignments(
        out / "clusters.csv",
        [
            Assignment(sid, int(pid), split, int(c))
            for sid, pid, split, c in zip(
                table.subject_ids, table.partition_ids, table.splits, labels, strict=True
            )
        ],
    )
    report["cluster_sizes"] = np.bincount(labels, minlength=int(report["k"])).tolist()
    report |= agreement_report(
        table.subject_ids, labels, table.partition_array, out / "plots", truth=truth,
        embedding=z, method=embedding, seed=proto.clustering.seed, plot_prefix="plots/",
    )  # fmt: skip
    write_json_atomic(out / "quality.json", report)
    info(f"{len(labels)} cases in {report['k']} clusters ({mode}); sizes {report['cluster_sizes']}")
    for name, q in report.get("quality_tables", {}).items():
        console.print(f"ARI vs {name}: {q['ari']:.3f}  NMI: {q['nmi']:.3f}", highlight=False)
    info(f"wrote {out / 'clusters.csv'}, {out / 'quality.json'}, {out / 'plots'}")
