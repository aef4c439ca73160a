"""Public pretraining: a starting model made from public data, pinned by the protocol.

``securefed pretrain`` trains the protocol's model, non-privately and centrally, on a folder of
public cases (e.g. ``securefed synth --preset public``; in practice a public challenge dataset)
and writes the weights as an ``.npz`` with a provenance ``.json`` beside it. A protocol pins the
file (``training.initial_weights``); every party that starts a model from the protocol (each
site, the in-process baselines) loads it only after checking its SHA-256, so a changed file is
refused before any training. DP finetuning from a public start is the standard way to make DP-SGD
learn on few patients (e.g. De et al. 2022, Tramer and Boneh 2021); with ``training.trainable``
it updates only a few blocks. Nothing of a site's patients is in the file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from securefed.errors import ConfigError, ProtocolError
from securefed.protocol import LoadedProtocol, open_pinned
from securefed.protocol.schema import TrainingSpec

__all__ = ["FIELD", "initial_weights", "pretrain", "read_weights_bytes"]

FIELD = "training.initial_weights"


def read_weights_bytes(data: bytes, source: str) -> list[np.ndarray]:
    """The arrays of an ``.npz`` written by ``save_weights`` (no pickle), in order."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return [np.array(npz[name]) for name in sorted(npz.files)]
    except (OSError, ValueError) as exc:
        raise ProtocolError(
            f"{source}: not a readable weights file (.npz without pickle); make it with "
            "`securefed pretrain`"
        ) from exc


def initial_weights(loaded: LoadedProtocol) -> list[np.ndarray] | None:
    """The protocol's public starting weights in the model's ``state_dict`` order (hash checked
    against the protocol; shapes against its model), or None when it pins none."""
    pinned = loaded.protocol.training.initial_weights
    if pinned is None:
        return None
    from securefed.models import build_model
    from securefed.training.local import get_weights

    weights = read_weights_bytes(open_pinned(loaded, pinned, FIELD), f"{FIELD}.file {pinned.file}")
    expected = get_weights(build_model(loaded.protocol.training))
    shapes = [tuple(w.shape) for w in weights]
    if shapes != [tuple(w.shape) for w in expected]:
        raise ProtocolError(
            f"{FIELD}.file {pinned.file}: holds {len(weights)} arrays that do not match the "
            f"protocol's model ({loaded.protocol.training.model}, {len(expected)} tensors); "
            "pretrain it with this protocol's training.model"
        )
    return [np.asarray(w, dtype=e.dtype) for w, e in zip(weights, expected, strict=True)]


def pretrain(
    spec: TrainingSpec,
    train: Sequence[dict[str, Any]],
    *,
    steps: int,
    lr: float,
    seed: int = 0,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Train every parameter of ``spec``'s model (whatever ``spec.trainable`` says) from its
    seeded initialisation on prepared public cases; returns (weights, the last step's stats)."""
    from securefed.models import build_model
    from securefed.training.local import get_weights, train_local

    if not train:
        raise ConfigError("pretrain: the public data folder holds no labelled case")
    full = spec.model_copy(update={"trainable": "all", "initial_weights": None})
    model = build_model(full)
    batch = int(spec.batch_size)
    epochs = -(-steps * batch // len(train)) + 1
    out = train_local(model, train, full, epochs=epochs, max_steps=steps, lr=lr, seed=seed)
    return get_weights(model), out
