"""What a site runs inside the ClientApp: model, data and local loops, bundled as a ``FlowerTask``.

The default task is securefed's own (``securefed.models.build_model`` and
``securefed.training.local``). A site may plug another one (a research model) through the
site-local environment variable ``SECUREFED_FLOWER_TASK=module:factory``; the server can never
choose the code a site runs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import ConfigError

__all__ = [
    "TASK_ENV",
    "FlowerTask",
    "default_task",
    "expand_weights",
    "resolve_task",
    "sent_indices",
    "unique_weights",
]

TASK_ENV = "SECUREFED_FLOWER_TASK"


@dataclass(frozen=True)
class FlowerTask:
    """Callables a site needs. Data never leaves the site: ``load_data`` returns local prepared
    cases; ``train`` returns ``{"num_examples", "loss"}``; ``evaluate`` returns per-case Dice
    (``{"cases": [{"dice_tc", "dice_wt", "dice_et"}, ...]}`` or the same keys as lists).
    ``train_dp`` (DP-SGD rounds, see securefed.training.dpsgd.train_dp_round): a task without it
    cannot run a protocol with ``training.dp_sgd.enabled``."""

    build_model: Callable[[Any], Any]
    load_data: Callable[[Path, int, Sequence[str], Any], Any]
    train: Callable[..., dict[str, Any]]
    evaluate: Callable[..., dict[str, Any]]
    get_weights: Callable[[Any], list[np.ndarray]]
    set_weights: Callable[[Any, list[np.ndarray]], None]
    train_dp: Callable[..., dict[str, Any]] | None = None


def _securefed_load_data(
    data_dir: Path, partition_id: int, subject_ids: Sequence[str], spec: Any
) -> Any:
    """Load the site's own cases by subject id and preprocess them (cached by local.py).

    Only the requested cases are checked (headers: present, readable, same geometry); the rest of
    the folder is listed, not opened, so a round at a site of a large federation does not re-read
    every case's headers (at 1,251 cases that took 6 s per site and round)."""
    from securefed.data import load_federation
    from securefed.data.validate import check_case
    from securefed.errors import DataError
    from securefed.training.local import prepare_cases

    if not subject_ids:
        return []
    federation = load_federation(data_dir, check="none")
    cases = []
    for sid in subject_ids:
        case = federation.cases.get(sid)
        if case is None:
            raise DataError(f"{data_dir}: case {sid} (assigned to this site) not found")
        owner = federation.partition_of.get(sid)
        if owner is not None and int(owner) != int(partition_id):
            raise DataError(
                f"{data_dir}: case {sid} belongs to partition {owner}, not to this site "
                f"({partition_id}); check the node config's partition-id"
            )
        check_case(case)
        cases.append(case)
    return prepare_cases(cases, spec)


def _state_layout(model: Any) -> tuple[list[int], list[int]]:
    """(index of each unique tensor in state_dict order, for each state_dict entry the position of
    its unique tensor). MONAI's DynUNet lists shared submodules twice in its state_dict (2.8 M
    values for 1.4 M parameters); sending each tensor once halves uploads and SecAgg+ work."""
    inner = getattr(model, "_module", model)
    first: dict[int, int] = {}
    unique: list[int] = []
    where: list[int] = []
    for i, tensor in enumerate(inner.state_dict(keep_vars=True).values()):
        key = id(tensor)
        if key not in first:
            first[key] = len(unique)
            unique.append(i)
        where.append(first[key])
    return unique, where


def unique_weights(get_all: Callable[[Any], list[np.ndarray]]) -> Callable[[Any], list[np.ndarray]]:
    """Wrap a ``get_weights`` so that shared tensors are sent once."""

    def get(model: Any) -> list[np.ndarray]:
        unique, _ = _state_layout(model)
        arrays = get_all(model)
        return [arrays[i] for i in unique]

    return get


def expand_weights(
    set_all: Callable[[Any, list[np.ndarray]], None],
) -> Callable[[Any, list[np.ndarray]], None]:
    """Wrap a ``set_weights`` to accept the arrays of :func:`unique_weights`."""

    def set_(model: Any, weights: list[np.ndarray]) -> None:
        unique, where = _state_layout(model)
        if len(weights) != len(unique):
            raise ConfigError(
                f"set_weights: got {len(weights)} arrays, the model has {len(unique)} distinct "
                "tensors; the weights come from a different model"
            )
        set_all(model, [weights[j] for j in where])

    return set_


def sent_indices(task: FlowerTask, spec: Any) -> tuple[int, ...] | None:
    """Positions, among the arrays ``task.get_weights`` returns, of those a site sends back after
    training: the parameters ``training.trainable`` names, when it names a subset and the
    aggregation adds plain arrays (``fedavg``, ``secagg+`` without client-level DP); None: all.
    The rest equals the round's start model at every site (frozen at the public start), so the
    server puts it back from the model it sent; the site derives this from its own protocol,
    never from the server's config."""
    if spec.trainable == "all" or spec.aggregation == "bfv" or spec.client_dp.enabled:
        return None
    model = task.build_model(spec)
    inner = getattr(model, "_module", model)
    unique, _ = _state_layout(model)
    tensors = list(inner.state_dict(keep_vars=True).values())
    picked = tuple(j for j, i in enumerate(unique) if getattr(tensors[i], "requires_grad", False))
    if len(task.get_weights(model)) != len(unique) or not picked:
        raise ConfigError(
            f"training.trainable = {spec.trainable!r}: this site's task does not send one array "
            "per distinct tensor or trains none of them; use the default task"
        )
    return picked


def default_task() -> FlowerTask:
    """securefed's DynUNet and local loops (imported lazily: torch/monai are heavy)."""
    from securefed.models import build_model
    from securefed.training import dpsgd, local

    return FlowerTask(
        build_model=build_model,
        load_data=_securefed_load_data,
        train=local.train_local,
        evaluate=local.evaluate_local,
        get_weights=unique_weights(local.get_weights),
        set_weights=expand_weights(local.set_weights),
        train_dp=dpsgd.train_dp_round,
    )


def resolve_task() -> FlowerTask:
    """The site's task: ``$SECUREFED_FLOWER_TASK`` (``module:factory``) or the default."""
    ref = os.environ.get(TASK_ENV, "").strip()
    if not ref:
        return default_task()
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"${TASK_ENV}={ref!r}: expected 'module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"${TASK_ENV}={ref!r}: cannot import it ({exc})") from exc
    task = factory()
    if not isinstance(task, FlowerTask):
        raise ConfigError(f"${TASK_ENV}={ref!r}: factory did not return a FlowerTask")
    return task
