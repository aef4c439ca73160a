"""How well clusters agree with a synthetic federation's truth (scanner, institution), with the
cluster x group tables and the 2-D embedding as plots. Simulation and audits only: truth is never
used to fit. Shared by ``securefed cluster`` and the study's clustering stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from securefed.clustering.io import read_truth
from securefed.clustering.plots import plot_embedding, plot_table
from securefed.clustering.quality import contingency, quality_report

__all__ = ["agreement_report"]


def agreement_report(
    subject_ids: Sequence[str],
    labels: np.ndarray,
    partition_ids: np.ndarray,
    plot_dir: Path,
    *,
    truth: Path | None,
    embedding: np.ndarray | None = None,
    method: str = "pca",
    seed: int = 0,
    plot_prefix: str = "",
) -> dict[str, Any]:
    """ARI/NMI per truth column (``quality``: flat summary, ``quality_tables``: with tables)
    and the plots written under ``plot_dir`` (``plots``: their names, prefixed by
    ``plot_prefix``). Without ``truth`` (real data), agreement with the institutions of the
    partition file only."""
    institution = np.asarray([str(int(p)) for p in partition_ids])
    groups: dict[str, np.ndarray] = {}
    if truth is not None:
        groups = read_truth(truth, list(subject_ids))
    groups.setdefault("institution", institution)
    out: dict[str, Any] = {"plots": []}
    # without truth (real data) the institutions of the partition file are the only groups
    tables = quality_report(labels, groups)
    out["quality_tables"] = tables
    out["quality"] = {f"{m}_{name}": q[m] for name, q in tables.items() for m in ("ari", "nmi")}
    for name in ("scanner", "institution"):
        if name in groups:
            cl, gr, counts = contingency(labels, groups[name])
            file = f"cluster_x_{name}.png"
            plot_table(counts, cl, gr, plot_dir / file, f"cluster x {name}", group=name)
            out["plots"].append(plot_prefix + file)
    if embedding is not None and len(embedding) == len(labels):
        colours = {"cluster": labels, **groups}
        plot_embedding(embedding, colours, plot_dir / "embedding.png", method, seed=seed)
        out["plots"].append(plot_prefix + "embedding.png")
    return out
