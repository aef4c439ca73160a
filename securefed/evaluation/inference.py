"""Sliding-window inference (MONAI) with the protocol's evaluation settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from securefed.protocol.schema import EvaluationSpec

__all__ = ["predict_logits", "predict_mask"]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    eval_spec: EvaluationSpec,
    device: torch.device,
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
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    eval_spec: EvaluationSpec,
    device: torch.device,
) -> np.ndarray:
    """Binary uint8 (3, X, Y, Z) prediction (TC, WT, ET): sigmoid > ``eval_spec.threshold``.

    ``eval_spec.postprocess = "largest-component"`` keeps the largest 26-connected component of
    the whole tumour (scipy.ndimage.label; MONAI's KeepLargestConnectedComponent needs scikit-image)
    and restricts TC and ET to it. The paper uses no post-processing (the default ``"none"``)."""
    logits = predict_logits(model, image, eval_spec, device)
    mask = (torch.sigmoid(logits) > float(eval_spec.threshold)).to(torch.uint8).numpy()
    if getattr(eval_spec, "postprocess", "none") == "largest-component" and mask[1].any():
        from scipy import ndimage

        labels, n = ndimage.label(mask[1], structure=np.ones((3, 3, 3), dtype=bool))
        if n > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            wt = (labels == int(np.argmax(sizes))).astype(np.uint8)
            mask = np.stack([mask[0] * wt, wt, mask[2] * wt])
    return mask
