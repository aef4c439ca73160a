"""Clustering quality against synthetic ground truth: ARI, NMI and contingency tables."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["contingency", "quality_report"]


def contingency(
    clusters: np.ndarray, groups: np.ndarray
) -> tuple[list[int], list[str], np.ndarray]:
    """(cluster ids, group names, counts[cluster, group])."""
    cl = sorted({int(c) for c in clusters})
    gr = sorted({str(g) for g in groups})
    table = np.zeros((len(cl), len(gr)), dtype=np.int64)
    ci = {c: i for i, c in enumerate(cl)}
    gi = {g: i for i, g in enumerate(gr)}
    for c, g in zip(clusters, groups, strict=True):
        table[ci[int(c)], gi[str(g)]] += 1
    return cl, gr, table


def quality_report(clusters: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """ARI and NMI of ``clusters`` vs each truth column, plus the cluster x group tables."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    out: dict[str, Any] = {}
    for name, groups in truth.items():
        cl, gr, table = contingency(clusters, groups)
        out[name] = {
            "ari": float(adjusted_rand_score(groups, clusters)),
            "nmi": float(normalized_mutual_info_score(groups, clusters)),
            "table": {"clusters": cl, "groups": gr, "counts": table.tolist()},
        }
    return out
