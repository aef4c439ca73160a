"""Local training and evaluation loops run at a site (the Flower client calls these).

What leaves a site through this module: ``get_weights`` returns model weights and
``train_local``/``evaluate_local`` return counts, losses and Dice/HD95 metrics (per-case values are
for the site's own report; send only aggregates). Prepared case data never leave the site.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from securefed.errors import EvaluationError, TrainingError
from securefed.training.datasets import prepare_cases, prepare_volumes, train_transform

if TYPE_CHECKING:
    from securefed.protocol.schema import EvaluationSpec, TrainingSpec

__all__ = [
    "THREADS_ENV",
    "configure_threads",
    "evaluate_local",
    "get_weights",
    "make_loss",
    "make_optimizer",
    "prepare_cases",
    "prepare_volumes",
    "resolve_device",
    "set_weights",
    "train_local",
]

THREADS_ENV = "SECUREFED_TORCH_THREADS"
_SAMPLE_KEYS = ("image", "label", "fg_indices", "bg_indices")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; otherwise the named device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def configure_threads() -> None:
    """Set torch's CPU threads from ``SECUREFED_TORCH_THREADS`` when set (a site-local setting)."""
    value = os.environ.get(THREADS_ENV)
    if value:
        try:
            n = int(value)
        except ValueError as exc:
            raise TrainingError(f"{THREADS_ENV}={value!r}: expected a positive integer") from exc
        if n >= 1 and torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside an Opacus GradSampleModule (keeps weight names stable)."""
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, nn.Module) else model


def make_optimizer(model: nn.Module, spec: TrainingSpec, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``spec.optimizer`` (sgd/adam/adamw) with ``lr``, ``spec.momentum`` (sgd) and
    ``spec.weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    wd = float(spec.weight_decay)
    name = spec.optimizer
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(spec.momentum), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise TrainingError(f"training.optimizer: unknown optimiser {name!r} (sgd, adam, adamw)")


class DiceBCELoss(nn.Module):
    """MONAI DiceLoss (sigmoid) + binary cross-entropy on the logits, each region (channel) on its
    own. (MONAI's DiceCELoss applies a softmax cross-entropy across channels, which is wrong for
    the nested, overlapping TC/WT/ET regions.)"""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


def make_loss(spec: TrainingSpec) -> nn.Module:
    """``spec.loss``: "dice" = MONAI DiceLoss on sigmoid outputs (the paper), "dice-bce" = that
    plus per-region binary cross-entropy. Per-sample Dice gives almost no gradient against false
    positives in a crop whose region is empty; the cross-entropy term does."""
    from monai.losses import DiceLoss

    name = getattr(spec, "loss", "dice")
    if name == "dice":
        return DiceLoss(sigmoid=True)
    if name == "dice-bce":
        return DiceBCELoss()
    raise TrainingError(f"training.loss: unknown loss {name!r} (dice, dice-bce)")


def _batches(n: int, batch: int, epochs: int, gen: torch.Generator) -> list[list[int]]:
    """Index batches for ``epochs`` passes over ``n`` cases; every batch is full (the last one of
    an epoch is topped up with other cases), so a batch of 1 only happens when ``batch`` is 1."""
    out: list[list[int]] = []
    per_epoch = math.ceil(n / batch)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        while len(order) < per_epoch * batch:
            order += torch.randperm(n, generator=gen).tolist()
        out += [order[i * batch : (i + 1) * batch] for i in range(per_epoch)]
    return out


def _crops(
    transform: Any, data: Sequence[dict[str, Any]], idx: Sequence[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One training crop (image, label) of each case ``idx`` of ``data``."""
    images, labels = [], []
    for i in idx:
        sample = transform({k: v for k, v in data[i].items() if k in _SAMPLE_KEYS})
        if isinstance(sample, list):
            sample = sample[0]
        images.append(torch.as_tensor(sample["image"]).as_subclass(torch.Tensor))
        labels.append(torch.as_tensor(sample["label"]).as_subclass(torch.Tensor))
    return images, labels


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"training diverged (loss {loss.item()}) at step {step}; lower the learning rate"
        )


def _per_sample_gradients(
    model: nn.Module, params: list[nn.Parameter], loss_fn: nn.Module, x: torch.Tensor,
    y: torch.Tensor, step: int,
) -> torch.Tensor:  # fmt: skip
    """Store each sample's gradient of its own loss as ``p.grad_sample`` (shape (B, *p.shape),
    Opacus's layout for loss_reduction="mean"); return the mean loss. Vectorised over the batch
    with ``torch.func`` (``vmap`` of ``grad``: each sample through the model on its own, batched
    by the vectorising map); a model ``vmap`` cannot run (in-place batch statistics) falls back to
    one backward pass per sample. Either equals Opacus's GradSampleModule on the DP model
    (tests/training/test_per_sample.py)."""
    try:
        grads, losses = _vmapped_gradients(model, params, loss_fn, x, y)
    except (RuntimeError, NotImplementedError, ValueError):  # not vmappable: one at a time
        grads, losses = _looped_gradients(model, params, loss_fn, x, y)
    for j in range(len(x)):
        _check_finite(losses[j], step)
    for p, buf in zip(params, grads, strict=True):
        p.grad_sample = buf  # type: ignore[attr-defined]  # Opacus reads it
    return losses.detach().mean()


def _vmapped_gradients(
    model: nn.Module, params: list[nn.Parameter], loss_fn: nn.Module, x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[list[torch.Tensor], torch.Tensor]:  # fmt: skip
    from torch.func import functional_call, grad_and_value, vmap

    wanted = {id(p) for p in params}
    names = [n for n, p in model.named_parameters() if id(p) in wanted]
    if len(names) != len(params):
        raise ValueError("parameters not all named in the model")
    trained = {n: p.detach() for n, p in model.named_parameters() if id(p) in wanted}
    fixed = {n: p.detach() for n, p in model.named_parameters() if id(p) not in wanted}
    fixed.update({n: b for n, b in model.named_buffers()})

    def one(weights: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **weights}, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per, losses = vmap(grad_and_value(one), in_dims=(None, 0, 0), randomness="error")(trained, x, y)
    order = {id(p): n for n, p in model.named_parameters()}
    return [per[order[id(p)]] for p in params], losses


def _looped_gradients(
    model: nn.Module, params: list[nn.Parameter], loss_fn: nn.Module, x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[list[torch.Tensor], torch.Tensor]:  # fmt: skip
    grads = [torch.empty((len(x), *p.shape), dtype=p.dtype, device=p.device) for p in params]
    losses = torch.empty(len(x), device=x.device)
    for j in range(len(x)):
        loss = loss_fn(model(x[j : j + 1]), y[j : j + 1])
        for buf, g in zip(grads, torch.autograd.grad(loss, params), strict=True):
            buf[j] = g
        losses[j] = loss.detach()
    return grads, losses


def train_local(
    model: nn.Module,
    data: Sequence[dict[str, Any]],
    spec: TrainingSpec,
    *,
    epochs: int,
    max_steps: int | None,
    lr: float,
    device: str | torch.device | None = None,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    batches: Sequence[Sequence[int]] | None = None,
    per_sample: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place on prepared ``data`` (see prepare_cases) with the loss of
    ``spec.loss`` (see make_loss): ``epochs`` passes, at most ``max_steps`` optimiser steps,
    batches of ``spec.batch_size`` crops, optimiser from ``spec`` (fresh each call unless
    ``optimizer`` is given, e.g. an Opacus one). Seeded by ``seed``. ``batches`` (DP-SGD)
    replaces the epoch plan with explicit case indices per step (then ``epochs`` is not used,
    ``max_steps`` still caps; a batch may be empty). ``per_sample`` (DP-SGD): each sample's
    gradient is computed on its own and stored as ``p.grad_sample`` for an Opacus DPOptimizer
    (exact for any model; an empty batch gives a noise-only step).

    Returns ``num_examples`` (cases), ``steps``, ``loss`` (mean over steps; NaN without data) and
    ``seconds``. With no cases, nothing is trained, except under ``per_sample`` with explicit
    ``batches`` (DP-SGD): every step then adds noise only.
    """
    if not data and not (per_sample and batches is not None):
        return {"num_examples": 0, "steps": 0, "loss": float("nan"), "seconds": 0.0}
    for item in data:
        if item.get("label") is None:
            raise TrainingError(
                f"case {item.get('subject_id')}: has no segmentation; only labelled cases can be "
                "used for training"
            )
    if epochs < 1:
        raise TrainingError(f"epochs must be >= 1, got {epochs}")
    configure_threads()
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    batch = int(spec.batch_size)
    if batches is not None:
        plan = [list(b) for b in batches]
    else:
        plan = _batches(len(data), batch, epochs, gen)
    if max_steps is not None:
        plan = plan[: max(0, int(max_steps))]
    transform = train_transform(spec, seed=int(seed))
    # channels-last is ~30% faster for 3D convolutions on CPU; Opacus-wrapped models keep theirs.
    plain = _unwrap(model) is model
    fast = dev.type == "cpu" and plain
    memory_format = torch.channels_last_3d if fast else torch.contiguous_format
    if fast:
        # Module.to takes memory_format (torch parses it like Tensor.to); its stubs omit it.
        model.to(device=dev, memory_format=memory_format)  # type: ignore[call-overload]
    else:
        model.to(dev)
    model.train()
    opt = optimizer if optimizer is not None else make_optimizer(model, spec, float(lr))
    loss_fn = make_loss(spec)
    losses: list[float] = []
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    for step, idx in enumerate(plan, start=1):
        images, labels = _crops(transform, data, idx)
        opt.zero_grad(set_to_none=True)
        if not images:
            if not per_sample:
                raise TrainingError(f"step {step}: empty batch outside DP-SGD")
            for p in params:  # Poisson sampling drew nobody: the optimizer adds noise only
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]
            opt.step()
            continue
        x = torch.stack(images).float().to(dev).contiguous(memory_format=memory_format)
        y = torch.stack(labels).float().to(dev)
        if per_sample:
            loss = _per_sample_gradients(model, params, loss_fn, x, y, step)
        else:
            loss = loss_fn(model(x), y)
            _check_finite(loss, step)
            loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if fast:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # see above
    return {
        "num_examples": len(data),
        "steps": len(losses),
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "seconds": time.perf_counter() - start,
    }


def evaluate_local(
    model: nn.Module,
    data: Sequence[dict[str, Any]],
    eval_spec: EvaluationSpec,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Sliding-window inference and metrics on prepared labelled ``data``.

    Returns ``num_examples``; ``cases``: one dict per case (``subject_id``, ``dice_tc``,
    ``dice_wt``, ``dice_et``, ``dice_mean``, and ``hd95_*`` in mm when ``eval_spec.hd95``, NaN when
    undefined); ``means``: per-case means (HD95 over defined cases, ``hd95_*_undefined`` counts).
    Per-case rows stay at the site; ``means`` and ``num_examples`` are what a site reports.
    """
    from securefed.evaluation import case_metrics, mean_metrics, predict_mask

    configure_threads()
    dev = resolve_device(device)
    model.to(dev)
    rows: list[dict[str, Any]] = []
    for item in data:
        if item.get("label") is None:
            raise EvaluationError(
                f"case {item.get('subject_id')}: has no segmentation; it cannot be scored"
            )
        pred = predict_mask(model, item["image"], eval_spec, dev)
        row: dict[str, Any] = {"subject_id": item["subject_id"]}
        row.update(
            case_metrics(
                pred, item["label"], spacing=item.get("spacing"), hd95=bool(eval_spec.hd95)
            )
        )
        rows.append(row)
    return {"num_examples": len(rows), "cases": rows, "means": mean_metrics(rows)}


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state (parameters and buffers) as float arrays in ``state_dict`` order.
    This is what a site sends for aggregation."""
    return [
        np.ascontiguousarray(v.detach().cpu().numpy()).copy()
        for v in _unwrap(model).state_dict().values()
    ]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays from :func:`get_weights` (same order); raises TrainingError on a count or
    shape mismatch naming the tensor."""
    inner = _unwrap(model)
    state = inner.state_dict()
    if len(weights) != len(state):
        raise TrainingError(
            f"set_weights: got {len(weights)} arrays, the model has {len(state)} tensors; the "
            "weights come from a different model"
        )
    new: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (name, ref), arr in zip(state.items(), weights, strict=True):
        arr = np.asarray(arr)
        if tuple(arr.shape) != tuple(ref.shape):
            raise TrainingError(
                f"set_weights: {name} has shape {tuple(arr.shape)}, the model expects "
                f"{tuple(ref.shape)}"
            )
        new[name] = torch.as_tensor(arr, dtype=ref.dtype)
    inner.load_state_dict(new, strict=True)
