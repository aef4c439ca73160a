"""What a site runs inside the ClientApp: model, data and local loops, bundled as a ``FlowerTask``.

The default task is securefed's own (``securefed.models.build_model`` and
``securefed.federated.local``). A site may plug another one (a research model) through the
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

__all__ = ["FlowerTask", "default_task", "resolve_task", "TASK_ENV"]

TASK_ENV = "SECUREFED_FLOWER_TASK"


@dataclass(frozen=True)
class FlowerTask:
    """Callables a site needs. Data never leaves the site: ``load_data`` returns local prepared
    cases; ``train`` returns ``{"num_examples", "loss"}``; ``evaluate`` returns per-case Dice
    (``{"cases": [{"dice_tc", "dice_wt", "dice_et"}, ...]}`` or the same keys as lists)."""

    build_model: Callable[[Any], Any]
    load_data: Callable[[Path, int, Sequence[str], Any], Any]
    train: Callable[..., dict[str, Any]]
    evaluate: Callable[..., dict[str, Any]]
    get_weights: Callable[[Any], list[np.ndarray]]
    set_weights: Callable[[Any, list[np.ndarray]], None]


def _securefed_load_data(data_dir: Path, partition_id: int, subject_ids: Sequence[str], spec: Any):
    """Load the site's own cases by subject id and preprocess them (cached by local.py)."""
    from securefed.data import load_federation
    from securefed.errors import DataError
    from securefed.federated.local import prepare_cases

    if not subject_ids:
        return []
    federation = load_federation(data_dir)
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
        cases.append(case)
    return prepare_cases(cases, spec)


def default_task() -> FlowerTask:
    """securefed's DynUNet and local loops (imported lazily: torch/monai are heavy)."""
    from securefed.federated import local
    from securefed.models import build_model

    return FlowerTask(
        build_model=build_model,
        load_data=_securefed_load_data,
        train=local.train_local,
        evaluate=local.evaluate_local,
        get_weights=local.get_weights,
        set_weights=local.set_weights,
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
