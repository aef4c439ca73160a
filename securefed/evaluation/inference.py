"""Sliding-window inference (MONAI) with the protocol's evaluation settings."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["predict_logits", "predict_mask"]


@torch.no_grad()
def predict_logits(
    model: nn.Module, image: torch.Tensor | np.ndarray, eval_spec: object, device: torch.device
) -> torch.Tensor:
    """Logits (3, X, Y, Z) for one preprocessed (4, X, Y, Z) volume: sliding windows of
    ``eval_spec.roi_size`` with ``eval_spec.overlap`` and ``eval_spec.blend`` blending."""
    from monai.inferers import sliding_window_inference

    x = torch.as_tensor(image, dtype=torch.float32).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    try:
        out = sliding_window_inference(
            x,
            roi_size=tuple(int(s) for s in eval_spec.roi_size),
            sw_batch_size=1,
            predictor=model,
            overlap=float(eval_spec.overlap),
            mode=str(eval_spec.blend),
        )
    finally:
        model.train(was_training)
    return torch.as_tensor(out)[0].float().cpu()


def predict_mask(
    model: nn.Module, image: torch.Tensor | np.ndarray, eval_spec: object, device: torch.device
) -> np.ndarray:
    """Binary uint8 (3, X, Y, Z) prediction (TC, WT, ET): sigmoid > ``eval_spec.threshold``."""
    logits = predict_logits(model, image, eval_spec, device)
    return (torch.sigmoid(logits) > float(eval_spec.threshold)).to(torch.uint8).numpy()
