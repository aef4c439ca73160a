"""evaluation.postprocess: the largest whole-tumour component, TC/ET restricted to it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from securefed.evaluation.inference import predict_mask


class _Blobs(torch.nn.Module):
    """Logits: a 4^3 tumour in every channel, a distant 2^3 WT blob, one distant ET voxel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], 3, *x.shape[2:]), -5.0)
        out[:, :, 2:6, 2:6, 2:6] = 5.0
        out[:, 1, 12:14, 12:14, 12:14] = 5.0
        out[:, 2, 13, 13, 13] = 5.0
        return out


def _spec(post: str) -> SimpleNamespace:
    return SimpleNamespace(
        roi_size=(16, 16, 16), overlap=0.0, blend="constant", threshold=0.5, postprocess=post
    )


def test_largest_component_removes_distant_false_positives() -> None:
    image = np.zeros((4, 16, 16, 16), np.float32)
    plain = predict_mask(_Blobs(), image, _spec("none"), torch.device("cpu"))
    kept = predict_mask(_Blobs(), image, _spec("largest-component"), torch.device("cpu"))
    assert plain.sum(axis=(1, 2, 3)).tolist() == [64, 72, 65]
    assert kept.sum(axis=(1, 2, 3)).tolist() == [64, 64, 64]
    assert kept.dtype == np.uint8
    assert kept.shape == plain.shape
