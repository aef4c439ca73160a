"""Membership-attack metrics shared by ``audit models``' attacks: ROC AUC and TPR at small FPRs,
each with a bootstrap interval (members and non-members resampled separately)."""

from __future__ import annotations

from typing import Any

import numpy as np

from securefed.stats import bootstrap_intervals

__all__ = ["CONFIDENCE", "FPRS", "membership_metrics"]

CONFIDENCE = 0.95
FPRS = (0.01, 0.001)


def _tpr_at(y: np.ndarray, score: np.ndarray, fpr: float) -> float:
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(y, score)
    ok = f <= fpr
    return float(t[ok].max()) if ok.any() else 0.0


def _metrics(members: np.ndarray, others: np.ndarray) -> np.ndarray:
    """AUC, then the TPR at each of FPRS, of member scores against non-member scores."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.ones(len(members)), np.zeros(len(others))])
    score = np.concatenate([members, others])
    return np.array([roc_auc_score(y, score), *(_tpr_at(y, score, f) for f in FPRS)])


def membership_metrics(y: np.ndarray, score: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """AUC and TPR at each of FPRS, with bootstrap intervals (:func:`securefed.stats.
    bootstrap_intervals`; members and non-members are resampled separately, so every resample
    holds both and the class sizes stay those of the attack)."""
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    members, others = score[y == 1], score[y != 1]
    point = _metrics(members, others)
    cis = bootstrap_intervals(_metrics, [members, others], confidence=CONFIDENCE, seed=seed)
    names = ["auc", *(f"tpr@{f:g}fpr" for f in FPRS)]
    chance = {"auc": 0.5, **{f"tpr@{f:g}fpr": f for f in FPRS}}
    return [{"metric": m, "value": float(v), "chance": chance[m], "ci": ci}
            for m, v, ci in zip(names, point, cis, strict=True)]  # fmt: skip
