"""Non-federated baselines, in-process, for simulation only.

NOT PRIVATE: ``centralized`` and ``cffl-ideal`` pool raw cases from several sites in one process,
which no real deployment may do; they exist as upper bounds for comparison in simulated studies.
``local`` (each site trains alone) and ``local-finetune`` (each site finetunes a given global
model on its own cases) share nothing, but are run here in one process for convenience.

Each baseline returns a :class:`BaselineResult`: weights per group (site id, cluster id or
``"all"``), per-case test metrics tagged with the group and the method, and a training history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from securefed.errors import TrainingError
from securefed.training.local import evaluate_local, get_weights, set_weights, train_local

if TYPE_CHECKING:
    from securefed.protocol.schema import EvaluationSpec, TrainingSpec

__all__ = [
    "BaselineResult",
    "SiteData",
    "centralized_baseline",
    "cffl_ideal_baseline",
    "local_baseline",
    "local_finetune_baseline",
    "train_pooled",
]

Case = dict[str, Any]


@dataclass(frozen=True)
class SiteData:
    """One site's prepared cases (see ``prepare_cases``) by split."""

    train: Sequence[Case]
    val: Sequence[Case] = ()
    test: Sequence[Case] = ()


@dataclass
class BaselineResult:
    """Weights per group, per-case test metrics and the training history of one baseline."""

    method: str
    weights: dict[str, list[np.ndarray]]
    cases: list[dict[str, Any]]
    history: list[dict[str, Any]] = field(default_factory=list)
    non_private: bool = False

    def means(self) -> dict[str, float]:
        from securefed.evaluation import mean_metrics

        return mean_metrics(self.cases)


def train_pooled(
    train: Sequence[Case],
    spec: TrainingSpec,
    eval_spec: EvaluationSpec,
    *,
    steps: int,
    lr: float,
    val: Sequence[Case] = (),
    eval_every: int | None = None,
    init_weights: Sequence[np.ndarray] | None = None,
    device: Any = None,
    seed: int = 0,
    group: str = "all",
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Train one model on ``train`` for ``steps`` optimiser steps (fresh model from ``spec`` or
    ``init_weights``). With ``val`` and ``eval_every``, evaluate every ``eval_every`` steps (and
    at step 0 when starting from ``init_weights``) and return the weights of the best mean
    validation Dice; otherwise the final weights. Returns (weights, history)."""
    from securefed.models import build_model

    if not train:
        raise TrainingError(f"{group}: no training cases")
    model = build_model(spec)
    if init_weights is not None:
        set_weights(model, init_weights)
    history: list[dict[str, Any]] = []
    chunk = eval_every if (val and eval_every) else steps
    best: tuple[float, list[np.ndarray]] | None = None

    def _score(done: int, loss: float) -> None:
        nonlocal best
        entry: dict[str, Any] = {"group": group, "step": done, "loss": loss}
        if val and eval_every:
            means = evaluate_local(model, val, eval_spec, device)["means"]
            entry.update({k: means[k] for k in ("dice_tc", "dice_wt", "dice_et", "dice_mean")})
            if best is None or entry["dice_mean"] > best[0]:
                best = (entry["dice_mean"], get_weights(model))
        history.append(entry)

    if init_weights is not None and val and eval_every:
        _score(0, float("nan"))
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        epochs = math.ceil(n * int(spec.batch_size) / len(train)) + 1
        out = train_local(
            model,
            train,
            spec,
            epochs=epochs,
            max_steps=n,
            lr=lr,
            device=device,
            seed=seed + done,
        )
        done += n
        _score(done, out["loss"])
    weights = best[1] if best is not None else get_weights(model)
    return weights, history


def _steps_for(n_cases: int, spec: TrainingSpec, epochs: int) -> int:
    return epochs * math.ceil(n_cases / int(spec.batch_size))


def _evaluate(
    weights: Sequence[np.ndarray],
    test: Sequence[Case],
    spec: TrainingSpec,
    eval_spec: EvaluationSpec,
    device: Any,
    tags: Mapping[str, Any],
) -> list[dict[str, Any]]:
    from securefed.models import build_model

    if not test:
        return []
    model = build_model(spec)
    set_weights(model, weights)
    rows = evaluate_local(model, test, eval_spec, device)["cases"]
    return [{**row, **tags} for row in rows]


def local_baseline(
    sites: Mapping[str, SiteData],
    spec: TrainingSpec,
    eval_spec: EvaluationSpec,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    lr: float | None = None,
    eval_every: int | None = None,
    device: Any = None,
    seed: int = 0,
    init_weights: Sequence[np.ndarray] | None = None,
) -> BaselineResult:
    """Each site trains its own model from the protocol's start (``init_weights``: its public
    initial weights; None: from scratch) on its own cases (``spec.local_epochs_baseline`` epochs
    at ``spec.lr`` unless given) and is scored on its own test cases. Nothing is shared."""
    return _per_site("local", sites, spec, eval_spec, init_weights, epochs, max_steps,
                     lr or spec.lr, eval_every, device, seed)  # fmt: skip


def local_finetune_baseline(
    global_weights: Sequence[np.ndarray],
    sites: Mapping[str, SiteData],
    spec: TrainingSpec,
    eval_spec: EvaluationSpec,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    lr: float | None = None,
    eval_every: int | None = None,
    device: Any = None,
    seed: int = 0,
) -> BaselineResult:
    """Each site finetunes ``global_weights`` on its own cases (``spec.local_epochs_baseline``
    epochs at ``spec.local_finetune_lr`` unless given; best validation round kept, round 0
    included, when ``eval_every`` is set) and is scored on its own test cases."""
    return _per_site("local-finetune", sites, spec, eval_spec, global_weights, epochs, max_steps,
                     lr or spec.local_finetune_lr, eval_every, device, seed)  # fmt: skip


def _per_site(
    method: str,
    sites: Mapping[str, SiteData],
    spec: TrainingSpec,
    eval_spec: EvaluationSpec,
    init: Sequence[np.ndarray] | None,
    epochs: int | None,
    max_steps: int | None,
    lr: float,
    eval_every: int | None,
    device: Any,
    seed: int,
) -> BaselineResult:
    result = BaselineResult(method=method, weights={}, cases=[])
    for k, (site, data) in enumerate(sorted(sites.items())):
        if not data.train:
            raise TrainingError(f"{method}: site {site} has no training cases")
        steps = _steps_for(len(data.train), spec, epochs or int(spec.local_epochs_baseline))
        if max_steps is not None:
            steps = min(steps, max_steps)
        weights, hist = train_pooled(
            data.train,
            spec,
            eval_spec,
            steps=steps,
            lr=lr,
            val=data.val,
            eval_every=eval_every,
            init_weights=init,
            device=device,
            seed=seed + 1000 * k,
            group=site,
        )
        result.weights[site] = weights
        result.history += hist
        result.cases += _evaluate(
            weights, data.test, spec, eval_spec, device, {"method": method, "site": site}
        )
    return result


def centralized_baseline(
    sites: Mapping[str, SiteData],
    spec: TrainingSpec,
    eval_spec: EvaluationSpec,
    *,
    steps: int,
    lr: float | None = None,
    eval_every: int | None = None,
    init_weights: Sequence[np.ndarray] | None = None,
    device: Any = None,
    seed: int = 0,
) -> BaselineResult:
    """NOT PRIVATE (simulation only): one model on every site's training cases pooled, best on
    pooled validation when ``eval_every`` is set; every site's test cases scored with it."""
    train = [c for s in sorted(sites) for c in sites[s].train]
    val = [c for s in sorted(sites) for c in sites[s].val]
    weights, hist = train_pooled(train, spec, eval_spec, steps=steps, lr=lr or spec.lr, val=val,
                                 eval_every=eval_every, init_weights=init_weights, device=device,
                                 seed=seed, group="all")  # fmt: skip
    result = BaselineResult("centralized", {"all": weights}, [], hist, non_private=True)
    for site in sorted(sites):
        tags = {"method": "centralized", "site": site}
        result.cases += _evaluate(weights, sites[site].test, spec, eval_spec, device, tags)
    return result


def cffl_ideal_baseline(
    sites: Mapping[str, SiteData],
    cluster_of: Mapping[str, int],
    spec: TrainingSpec,
    eval_spec: EvaluationSpec,
    *,
    steps: int,
    lr: float | None = None,
    eval_every: int | None = None,
    init_weights: Sequence[np.ndarray] | None = None,
    device: Any = None,
    seed: int = 0,
) -> BaselineResult:
    """NOT PRIVATE (simulation only): for each cluster, one model on that cluster's training cases
    pooled across sites, from ``init_weights`` (e.g. the global model; default rate
    ``spec.finetune_lr``) or from scratch (``spec.lr``); each test case scored with its cluster's
    model.
    ``cluster_of`` maps every subject id to its cluster (clusters.csv)."""

    def cluster(case: Case) -> int:
        try:
            return int(cluster_of[case["subject_id"]])
        except KeyError as exc:
            raise TrainingError(
                f"cffl-ideal: case {case['subject_id']} has no cluster in the assignment"
            ) from exc

    every = [c for s in sorted(sites) for split in ("train", "val", "test")
             for c in getattr(sites[s], split)]  # fmt: skip
    clusters = sorted({cluster(c) for c in every})
    rate = lr or (spec.finetune_lr if init_weights is not None else spec.lr)
    result = BaselineResult("cffl-ideal", {}, [], [], non_private=True)
    for k in clusters:
        train = [c for s in sorted(sites) for c in sites[s].train if cluster(c) == k]
        val = [c for s in sorted(sites) for c in sites[s].val if cluster(c) == k]
        weights: list[np.ndarray]
        hist: list[dict[str, Any]]
        if not train:
            if init_weights is None:
                raise TrainingError(f"cffl-ideal: cluster {k} has no training cases")
            weights, hist = [np.array(w) for w in init_weights], []
        else:
            weights, hist = train_pooled(train, spec, eval_spec, steps=steps, lr=rate, val=val,
                                         eval_every=eval_every, init_weights=init_weights,
                                         device=device, seed=seed + 1000 * k,
                                         group=f"cluster-{k}")  # fmt: skip
        result.weights[str(k)] = weights
        result.history += hist
        for site in sorted(sites):
            test = [c for c in sites[site].test if cluster(c) == k]
            tags = {"method": "cffl-ideal", "site": site, "cluster": k}
            result.cases += _evaluate(weights, test, spec, eval_spec, device, tags)
    return result
