"""Per-sample gradients of the DP-SGD loop (one backward pass per sample) against Opacus's
vectorised GradSampleModule on the DP model: the same gradients, so Opacus's clipping and noise
act on exactly what Opacus itself would compute."""

from __future__ import annotations

import warnings

import torch

from securefed.models.networks import build_dp_unet
from securefed.training.local import _per_sample_gradients


def test_per_sample_gradients_equal_opacus_grad_sample() -> None:
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = build_dp_unet()
    x = torch.randn(3, 4, 16, 16, 16)
    y = (torch.rand(3, 3, 16, 16, 16) > 0.7).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    _per_sample_gradients(model, params, loss_fn, x, y, step=1)
    ours = [p.grad_sample.clone() for p in params]
    for p in params:
        del p.grad_sample
    gsm = GradSampleModule(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss_fn(gsm(x), y).backward()
    theirs = [p.grad_sample for p in params]
    gsm._close()
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        # Opacus's mean reduction: grad_sample[i] = gradient of sample i's own loss.
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_the_vectorised_and_the_looped_per_sample_gradients_agree() -> None:
    """The vmap path and the one-sample-at-a-time fallback compute the same gradients and losses
    (the fallback serves models vmap cannot run)."""
    from securefed.training.local import _looped_gradients, _vmapped_gradients

    torch.manual_seed(1)
    model = build_dp_unet()
    x = torch.randn(2, 4, 16, 16, 16)
    y = (torch.rand(2, 3, 16, 16, 16) > 0.7).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    fast, fast_loss = _vmapped_gradients(model, params, loss_fn, x, y)
    slow, slow_loss = _looped_gradients(model, params, loss_fn, x, y)
    torch.testing.assert_close(fast_loss, slow_loss, rtol=1e-5, atol=1e-7)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
