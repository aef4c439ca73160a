"""Membership-attack metrics shared by ``audit models``' attacks: ROC AUC and TPR at small FPRs,
each with a bootstrap interval over cases."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CONFIDENCE", "FPRS", "membership_metrics"]

_BOOT = 1000
CONFIDENCE = 0.95
FPRS = (0.01, 0.001)


def _tpr_at(y: np.ndarray, score: np.ndarray, fpr: float) -> float:
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(y, score)
    ok = f <= fpr
    return float(t[ok].max()) if ok.any() else 0.0


def membership_metrics(y: np.ndarray, score: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """AUC and TPR at each of FPRS, with bootstrap intervals (resampling cases)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = {"auc": []}
    stats.update({f"tpr@{f:g}fpr": [] for f in FPRS})
    for _ in range(_BOOT):
        i = rng.integers(0, len(y), len(y))
        if len(set(y[i])) < 2:
            continue
        stats["auc"].append(float(roc_auc_score(y[i], score[i])))
        for f in FPRS:
            stats[f"tpr@{f:g}fpr"].append(_tpr_at(y[i], score[i], f))
    a = (1 - CONFIDENCE) / 2
    point = {"auc": float(roc_auc_score(y, score))}
    point.update({f"tpr@{f:g}fpr": _tpr_at(y, score, f) for f in FPRS})
    chance = {"auc": 0.5, **{f"tpr@{f:g}fpr": f for f in FPRS}}
    out = []
    for metric, values in stats.items():
        v = sorted(values)
        out.append({"metric": metric, "value": point[metric], "chance": chance[metric],
                    "ci": [v[int(a * len(v))], v[max(0, int((1 - a) * len(v)) - 1)]]})  # fmt: skip
    return out
