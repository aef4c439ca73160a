"""The case-weighted cluster average under all-sites membership (secure-aggregate features).

With ``release.mode = "secure-aggregate"`` no per-case vector leaves a site, so the server does
not know which sites hold a cluster's cases and every site joins every cluster's federation
(securefed.protocol.egress, ``membership = "all-sites"``). Averaging every site's model with
weight 1 would dilute a cluster's finetuning by the share of sites that do not hold it. Instead,
in each cluster round each site sends, inside the secure aggregate (masked by SecAgg+ or encrypted
under BFV, FedAvg weight 1 for every site):

- its update u = trained - received, scaled by its weight w = min(n, W) / W, where n is its
  number of train cases of the cluster (0 when it holds none: a zero update) and W the
  protocol's public ``secure_aggregation.max_weight``;
- w itself, as one more array of one value.

The aggregate opens as the means over the round's sites of w u and of w; the server's new model
is ``received + mean(w u) / mean(w)``, the case-weighted FedAvg of the sites that hold the
cluster. What opens beyond the model: the sum of the weights (the cluster's train-case total over
the round's sites, divided by W), listed in the egress table. A round in which no site holds the
cluster (the weight sum is not positive) keeps the received model.

Precision: the scaled update goes through SecAgg+'s quantisation (or BFV's fixed point) like any
model value, so keep ``max_weight`` near the largest site's cluster (its documented rule).
Tests: ``tests/federation/test_egress.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefed.errors import TrainingError

__all__ = ["case_weight", "decode_weighted", "weighted_update"]


def case_weight(n_train: int, max_weight: float) -> float:
    """w = min(n, W) / W: the site's weight in a cluster average, in [0, 1]."""
    if max_weight <= 0:
        raise TrainingError(f"secure_aggregation.max_weight must be positive, got {max_weight}")
    return min(float(n_train), float(max_weight)) / float(max_weight)


def weighted_update(
    trained: Sequence[np.ndarray],
    received: Sequence[np.ndarray],
    n_train: int,
    max_weight: float,
) -> list[np.ndarray]:
    """What a site sends in a cluster round: ``w * (trained - received)`` per array (dtype kept)
    followed by ``[w]`` (float32)."""
    if len(trained) != len(received):
        raise TrainingError(
            f"a weighted update of {len(trained)} arrays for a model of {len(received)}"
        )
    w = case_weight(n_train, max_weight)
    out = []
    for t, r in zip(trained, received, strict=True):
        t, r = np.asarray(t), np.asarray(r)
        if t.shape != r.shape:
            raise TrainingError(f"a trained array of shape {t.shape} for one of {r.shape}")
        delta = (t.astype(np.float64) - r.astype(np.float64)) * w
        out.append(delta.astype(r.dtype) if np.issubdtype(r.dtype, np.floating) else delta)
    out.append(np.asarray([w], dtype=np.float32))
    return out


def decode_weighted(
    start: Sequence[np.ndarray],
    aggregate: Sequence[np.ndarray],
    positions: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """The round's new model from the opened aggregate (the means over the round's sites of the
    scaled updates and of the weights): ``start + mean(w u) / mean(w)`` on the trained arrays
    (``positions``: the indices of ``start`` the sites sent, in order; None: all), ``start``
    elsewhere; ``start`` itself when the weight sum is not positive (no site holds the
    cluster)."""
    if not aggregate:
        raise TrainingError("a weighted aggregate without its weight array")
    *updates, weight = [np.asarray(a) for a in aggregate]
    where = list(range(len(start))) if positions is None else [int(i) for i in positions]
    if len(updates) != len(where) or weight.size != 1:
        raise TrainingError(
            f"a weighted aggregate of {len(updates)} update arrays and a weight of "
            f"{weight.size} values for {len(where)} trained arrays"
        )
    total = float(weight.reshape(-1)[0])
    new = [np.asarray(a).copy() for a in start]
    if not np.isfinite(total) or total <= 0:
        return new
    for u, i in zip(updates, where, strict=True):
        base = np.asarray(start[i])
        if u.shape != base.shape:
            raise TrainingError(f"an aggregate array of shape {u.shape} for one of {base.shape}")
        step = base.astype(np.float64) + u.astype(np.float64) / total
        new[i] = step.astype(base.dtype)
    return new
