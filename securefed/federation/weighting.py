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

With DP-SGD (``training.dp_sgd``) the update is already a sum over the patients of each step
divided by the public ``batch_size`` B, so it is sent unscaled, and a site without cases of the
cluster runs the same DP-SGD round with noise-only steps (the same mechanism on an empty
cluster: the noise covers everything it sends). Its weight is its expected patients per step
over B (min(patients, B) with fixed-size batches, ``sampling_rate`` x patients under Poisson
sampling) plus its exact discrete Gaussian share of the noise ``dp_sgd.weight_noise`` (sized for
the honest sites of any aggregate, on the 2^-12 grid, OpenDP), charged to the ledger with the
round's steps before any noise (securefed.training.dpsgd: ``DPSGDPlan.finetune_event``). The
server then divides by the noised weight sum, floored at one batch (a public rule).

Precision: the scaled update goes through SecAgg+'s quantisation (or BFV's fixed point) like any
model value, so keep ``max_weight`` near the largest site's cluster (its documented rule).
Tests: ``tests/federation/test_egress.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from securefed.errors import TrainingError
from securefed.protocol import Protocol

__all__ = ["DP_WEIGHT_FLOOR", "case_weight", "decode_weighted", "dp_weight", "weighted_update"]

DP_WEIGHT_FLOOR = 1.0
"""Under DP-SGD the server divides by at least one batch's weight (the noised sum may be small or
negative): a public rule, post-processing of the opened sum."""


def case_weight(n_train: int, max_weight: float) -> float:
    """w = min(n, W) / W: the site's weight in a cluster average, in [0, 1]."""
    if max_weight <= 0:
        raise TrainingError(f"secure_aggregation.max_weight must be positive, got {max_weight}")
    return min(float(n_train), float(max_weight)) / float(max_weight)


def dp_weight(protocol: Protocol, patients: int, *context: str) -> float:
    """A site's noised weight in a DP-SGD cluster round: (expected patients per step, on the
    share grid, + its discrete Gaussian share of ``dp_sgd.weight_noise``) / ``batch_size``.
    ``context`` names the release for the noise source (site id, release id). Call only after
    the round is charged (it draws noise)."""
    from securefed.privacy.noise import (
        SHARE_GRID,
        distributed_discrete_gaussian_share,
        noise_source_for,
    )
    from securefed.training.dpsgd import sampling_of

    t = protocol.training
    dps = t.dp_sgd
    batch = int(t.batch_size)
    if sampling_of(protocol) == "poisson":
        expected = float(dps.sampling_rate or 1.0) * int(patients)  # Poisson sampling
    else:
        expected = float(min(int(patients), batch))  # fixed-size batches, no padding
    honest = protocol.weight_noise_honest_sites()
    share = distributed_discrete_gaussian_share(
        noise_source_for(protocol, *context, "cluster-weight"), float(dps.weight_noise),
        max(honest, len(protocol.sites), 2), (1,), min_contributors=honest,
    )  # fmt: skip
    on_grid = round(expected / SHARE_GRID) * SHARE_GRID
    return (on_grid + float(share[0])) / batch


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
    *,
    n_sites: int = 1,
    floor: float = 0.0,
) -> list[np.ndarray]:
    """The round's new model from the opened aggregate (the means over the round's ``n_sites``
    sites of the scaled updates and of the weights): ``start + mean(w u) / mean(w)`` on the
    trained arrays (``positions``: the indices of ``start`` the sites sent, in order; None: all),
    ``start`` elsewhere; ``start`` itself when the weight sum is not positive (no site holds the
    cluster). ``floor``: the weight sum divided by is at least this (DP-SGD: one batch)."""
    if not aggregate:
        raise TrainingError("a weighted aggregate without its weight array")
    *updates, weight = [np.asarray(a) for a in aggregate]
    where = list(range(len(start))) if positions is None else [int(i) for i in positions]
    if len(updates) != len(where) or weight.size != 1:
        raise TrainingError(
            f"a weighted aggregate of {len(updates)} update arrays and a weight of "
            f"{weight.size} values for {len(where)} trained arrays"
        )
    mean = float(weight.reshape(-1)[0])
    new = [np.asarray(a).copy() for a in start]
    if not np.isfinite(mean) or (mean <= 0 and floor <= 0):
        return new
    total = max(mean, float(floor) / max(1, int(n_sites)))  # a mean: the floor over the sites
    for u, i in zip(updates, where, strict=True):
        base = np.asarray(start[i])
        if u.shape != base.shape:
            raise TrainingError(f"an aggregate array of shape {u.shape} for one of {base.shape}")
        step = base.astype(np.float64) + u.astype(np.float64) / total
        new[i] = step.astype(base.dtype)
    return new
