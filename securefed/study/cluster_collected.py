"""`securefed cluster`: cluster a collected feature table as the protocol says, on one machine.

plain / local-dp: the server's fit (:func:`securefed.server.cluster_model.fit_cluster_model`, the
same as the study's clustering stage), applied to the collected rows. secure-aggregate: the
simulated federated DP clustering (:func:`securefed.study.secure_clustering.cluster_table_secure`)
with each partition's rows held by its site. Writes OUT/model/, OUT/clusters.csv,
OUT/quality.json and OUT/plots/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from securefed.clustering.agreement import agreement_report
from securefed.clustering.assignments import Assignment, write_assignments
from securefed.clustering.fixed_projection import projection_for
from securefed.fileio import write_json_atomic
from securefed.protocol import LoadedProtocol
from securefed.radiomics.table import FeatureTable
from securefed.server.cluster_model import fit_cluster_model
from securefed.study.secure_clustering import (
    cluster_table_secure,
    secure_summary,
    write_centroids,
)

__all__ = ["cluster_collected"]


def cluster_collected(
    loaded: LoadedProtocol,
    table: FeatureTable,
    out: Path,
    *,
    truth: Path | None = None,
    embedding: str = "pca",
    ledgers: Path | None = None,
    unsafe_seed: int | None = None,
) -> dict[str, Any]:
    """Cluster ``table`` and write the outputs; returns the quality.json mapping."""
    proto = loaded.protocol
    report: dict[str, Any] = {
        "protocol": loaded.sha256,
        "mode": proto.release.mode,
        "n_cases": len(table.subject_ids),
        "n_fit_cases": int(table.fit_mask.sum()),
    }
    start = time.perf_counter()
    if proto.release.mode == "secure-aggregate":
        ledger_root = ledgers if ledgers is not None else out / "ledgers"
        labels, result = cluster_table_secure(
            table, loaded, ledger_root, held_out=proto.data.held_out_partitions,
            unsafe_seed=unsafe_seed,
        )  # fmt: skip
        projection = projection_for(loaded, table.columns)
        write_centroids(out / "model", result, projection.to_json_bytes())
        cols = [table.columns.index(c) for c in projection.columns]
        z = projection(np.asarray(table.values)[:, cols])
        report |= {"k": result.plan.k, "k_selection": "secure", "secure": secure_summary(result)}
        report["secure"]["ledgers"] = str(ledger_root)
    else:
        fitted = fit_cluster_model(table, loaded)
        fitted.model.save(out / "model")
        labels = fitted.model.assign(table.values)
        z = fitted.model.embed(table.values)
        report |= fitted.summary()
    report["seconds"] = time.perf_counter() - start
    rows = zip(table.subject_ids, table.partition_ids, table.splits, labels, strict=True)
    write_assignments(
        out / "clusters.csv", [Assignment(s, int(p), sp, int(c)) for s, p, sp, c in rows]
    )
    report["cluster_sizes"] = np.bincount(labels, minlength=int(report["k"])).tolist()
    report |= agreement_report(
        table.subject_ids, labels, table.partition_array, out / "plots", truth=truth,
        embedding=z, method=embedding, seed=proto.clustering.seed, plot_prefix="plots/",
    )  # fmt: skip
    write_json_atomic(out / "quality.json", report)
    return report
