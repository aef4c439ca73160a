"""What the server learns from one site's update (``audit models``, attack ``update-membership``).

In plain FedAvg the server receives each site's model after its local steps; under SecAgg+ it
receives only the sum over the round's sites (and their number). The attack is white-box gradient
alignment (in the spirit of Nasr, Shokri and Houmansadr 2019): from the round's starting model
``w0`` (which the server sent), each case's loss gradient ``g(x)`` at ``w0``; the score of case
``x`` against an update ``d`` is ``cos(d, -g(x))`` (local training moves the weights down its
members' gradients). Two targets, the same members and non-members:

- ``plain-update``: ``d`` is one site's own update ``w_site - w0``; members that site's train cases;
- ``secagg-aggregate``: ``d`` is the mean update of all the round's sites (all the SecAgg+ sum gives
  the server).

Non-members: the test cases (in no site's training set). Plus ``site-attribution`` under plain
FedAvg: each train case is given to the site whose update it aligns with best (chance: one over
the number of sites); the SecAgg+ server holds one vector for all sites, so it cannot attribute.

The updates are recomputed with the protocol's local recipe (optimiser, lr, local steps, batch and
crops) from two starting models the server sends in a run: the initial model (round 1) and the
trained global model (a late round). Pairs (site, case) share cases, so the bootstrap intervals
(over pairs, members and non-members resampled separately) are a little narrow. The recomputed
updates carry no DP-SGD or client-level DP noise: under a DP-training protocol the attack measures
the update before its noise (an upper bound on what the server sees). Tests:
``tests/audit/test_update_attack.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from securefed.audit.membership import CONFIDENCE, membership_metrics
from securefed.stats import clopper_pearson

__all__ = ["alignment_attacks", "case_gradient", "run_update_attacks"]

_KEYS = ("image", "label", "fg_indices", "bg_indices")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def alignment_attacks(
    grads: Mapping[int, np.ndarray],
    deltas: Mapping[int, np.ndarray],
    members: Mapping[int, Sequence[int]],
    non_members: Sequence[int],
    *,
    start: str,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The attacks' results from per-case gradients, per-site updates and who trained where.

    ``grads[i]``: case i's loss gradient at the start model; ``deltas[s]``: site s's update;
    ``members[s]``: site s's train cases; ``non_members``: cases in no training set."""
    sites = sorted(deltas)
    aggregate = np.mean([deltas[s] for s in sites], axis=0)
    out: list[dict[str, Any]] = []
    for target, update in (("plain-update", deltas), ("secagg-aggregate", None)):
        y, score = [], []
        for s in sites:
            d = deltas[s] if update is not None else aggregate
            for i, label in [(i, 1) for i in members[s]] + [(i, 0) for i in non_members]:
                y.append(label)
                score.append(_cos(d, -grads[i]))
        ya, sa = np.array(y), np.array(score)
        if len(set(y)) < 2:
            continue
        for m in membership_metrics(ya, sa, seed=seed):
            out.append({"attack": "update-membership", "target": target, "model": start,
                        **m, "n": len(ya), "members": int(ya.sum())})  # fmt: skip
    if len(sites) >= 2:
        hits = [
            max(sites, key=lambda t: _cos(deltas[t], -grads[i])) == s
            for s in sites
            for i in members[s]
        ]
        if hits:
            out.append(_attribution(np.array(hits, dtype=float), len(sites), start))
    return out


def _attribution(hits: np.ndarray, n_sites: int, start: str) -> dict[str, Any]:
    """Accuracy of assigning train cases to their site, with an exact (Clopper-Pearson) interval."""
    k, n = int(hits.sum()), len(hits)
    lo, hi = clopper_pearson(k, n, CONFIDENCE)
    return {"attack": "site-attribution", "target": "plain-update", "model": start,
            "metric": "accuracy", "value": k / n, "chance": 1.0 / n_sites, "ci": [lo, hi],
            "n": n, "members": n}  # fmt: skip


def _flat_params(model: Any) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()


def case_gradient(
    model: Any, item: dict[str, Any], spec: Any, *, crops: int, seed: int
) -> np.ndarray:
    """The loss gradient (over the model's parameters, flattened) of one prepared case, on a batch
    of ``crops`` training crops drawn by the protocol's training transform."""
    import torch

    from securefed.training.datasets import train_transform
    from securefed.training.local import make_loss

    transform = train_transform(spec, seed=seed)
    images, labels = [], []
    for _ in range(crops):
        sample = transform({k: v for k, v in item.items() if k in _KEYS})
        sample = sample[0] if isinstance(sample, list) else sample
        images.append(torch.as_tensor(sample["image"]).as_subclass(torch.Tensor))
        labels.append(torch.as_tensor(sample["label"]).as_subclass(torch.Tensor))
    model.train()
    model.zero_grad(set_to_none=True)
    loss = make_loss(spec)(model(torch.stack(images).float()), torch.stack(labels).float())
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads]).double().numpy()


def run_update_attacks(
    model: Any,
    cases: Sequence[dict[str, Any]],
    site_of: Sequence[int | None],
    spec: Any,
    starts: Mapping[str, Callable[[Any], None]],
    *,
    crops: int = 4,
    seed: int = 0,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Recompute every site's update from each start model and run ``alignment_attacks``.

    ``site_of[i]``: the site (partition id) that trains on case i, None for a test case;
    ``starts[name](model)`` loads that start model's weights into ``model``."""
    import copy

    from securefed.training.local import train_local

    members: dict[int, list[int]] = {}
    for i, s in enumerate(site_of):
        if s is not None:
            members.setdefault(int(s), []).append(i)
    non_members = [i for i, s in enumerate(site_of) if s is None]
    out: list[dict[str, Any]] = []
    for name, load in starts.items():
        if progress is not None:
            progress(f"update attack from the {name} model: {len(members)} site updates")
        load(model)
        start_state = copy.deepcopy(model.state_dict())
        theta0 = _flat_params(model)
        grads = {i: case_gradient(model, cases[i], spec, crops=crops, seed=seed + i)
                 for i in range(len(cases))}  # fmt: skip
        deltas: dict[int, np.ndarray] = {}
        for s, idx in sorted(members.items()):
            model.load_state_dict(start_state)
            site_seed = seed + 7919 * (s + 1)
            train_local(model, [cases[i] for i in idx], spec, epochs=int(spec.local_epochs),
                        max_steps=spec.local_steps, lr=float(spec.lr), seed=site_seed)  # fmt: skip
            deltas[s] = _flat_params(model) - theta0
        model.load_state_dict(start_state)
        out += alignment_attacks(grads, deltas, members, non_members, start=name, seed=seed)
    return out
