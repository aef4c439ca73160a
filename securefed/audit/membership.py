"""Membership-attack metrics shared by ``audit models``' attacks: ROC AUC and TPR at small FPRs,
each with a bootstrap interval (members and non-members resampled separately)."""

from __future__ import annotations

from typing import Any

import numpy as np

from securefed.errors import InternalError
from securefed.stats import bootstrap_intervals

__all__ = ["CONFIDENCE", "FPRS", "membership_metrics"]

CONFIDENCE = 0.95
FPRS = (0.01, 0.001)


def _allowed_false_positives(fpr: float, n: int) -> int:
    """The most non-members ``k`` a threshold may pass with ``k / n <= fpr`` (as sklearn's
    ``roc_curve`` compares it, in floating point)."""
    k = int(np.floor(fpr * n))
    while k + 1 <= n and (k + 1) / n <= fpr:
        k += 1
    while k > 0 and k / n > fpr:
        k -= 1
    return k


def _metrics(members: np.ndarray, others: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC, then the TPR at each of FPRS, of member scores against non-member scores, along
    ``axis`` (vectorized over the bootstrap's resamples; the values of sklearn's
    ``roc_auc_score`` and ``roc_curve``, ties counted half: tests/audit/test_membership_metrics.py).

    AUC is the Mann-Whitney U over ``m * n`` from the average ranks; the TPR at FPR ``f`` is the
    share of members strictly above the ``(k + 1)``-th highest non-member, ``k`` the most
    non-members a threshold may pass at ``f`` (the best ROC point at or under ``f``)."""
    from scipy.stats import rankdata

    members = np.moveaxis(np.asarray(members, dtype=np.float64), axis, -1)
    others = np.moveaxis(np.asarray(others, dtype=np.float64), axis, -1)
    # a class of one case is held fixed while the other is resampled (securefed.stats)
    lead = np.broadcast_shapes(members.shape[:-1], others.shape[:-1])
    members = np.broadcast_to(members, lead + members.shape[-1:])
    others = np.broadcast_to(others, lead + others.shape[-1:])
    m, n = members.shape[-1], others.shape[-1]
    ranks = rankdata(np.concatenate([members, others], axis=-1), axis=-1)
    auc = (ranks[..., :m].sum(axis=-1) - m * (m + 1) / 2) / (m * n)
    high_first = -np.sort(-others, axis=-1)
    tprs = []
    for f in FPRS:
        k = _allowed_false_positives(f, n)
        if k >= n:
            tprs.append(np.ones_like(auc))
        else:
            tprs.append((members > high_first[..., k : k + 1]).mean(axis=-1))
    return np.stack([auc, *tprs])


def membership_metrics(y: np.ndarray, score: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    """AUC and TPR at each of FPRS, with bootstrap intervals (:func:`securefed.stats.
    bootstrap_intervals`; members and non-members are resampled separately, so every resample
    holds both and the class sizes stay those of the attack)."""
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    bad = int((~np.isfinite(score)).sum())
    if bad:
        raise InternalError(
            f"membership scores: {bad} of {len(score)} are not finite (a model whose loss is NaN "
            "or infinite on those cases?); the attack cannot rank them"
        )
    members, others = score[y == 1], score[y != 1]
    point = _metrics(members, others)
    cis = bootstrap_intervals(_metrics, [members, others], vectorized=True, confidence=CONFIDENCE,
                              seed=seed)  # fmt: skip
    names = ["auc", *(f"tpr@{f:g}fpr" for f in FPRS)]
    chance = {"auc": 0.5, **{f"tpr@{f:g}fpr": f for f in FPRS}}
    return [{"metric": m, "value": float(v), "chance": chance[m], "ci": ci}
            for m, v, ci in zip(names, point, cis, strict=True)]  # fmt: skip
