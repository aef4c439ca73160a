"""The paper's small DynUNet and the DP-SGD capable UNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from securefed.errors import ConfigError
from securefed.models import build_model, count_parameters
from securefed.protocol.schema import DPSGDSpec, TrainingSpec
from securefed.training.local import get_weights, set_weights


def test_dynunet_parameter_count_and_bias() -> None:
    model = build_model(TrainingSpec())
    # 1,401,075 weights (MONAI DynUNet) + 816 biases added to every convolution.
    assert count_parameters(model) == 1_401_891
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]
    assert convs
    assert all(c.bias is not None for c in convs)
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms
    assert all(not n.affine for n in norms)
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts
    assert all(a.negative_slope == pytest.approx(0.01) for a in acts)


def test_forward_shapes() -> None:
    model = build_model(TrainingSpec())
    with torch.no_grad():
        out = model(torch.randn(2, 4, 16, 16, 16))
    assert out.shape == (2, 3, 16, 16, 16)


def test_seeded_initialisation_is_reproducible_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    a = get_weights(build_model(TrainingSpec(seed=3)))
    assert torch.equal(state, torch.random.get_rng_state())
    b = get_weights(build_model(TrainingSpec(seed=3)))
    c = get_weights(build_model(TrainingSpec(seed=4)))
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=True))


def test_unknown_model_is_a_config_error() -> None:
    class Spec:
        model = "segresnet"

    with pytest.raises(ConfigError, match="training.model"):
        build_model(Spec())


def test_dp_variant_selected_by_spec_and_one_opacus_step() -> None:
    from monai.losses import DiceLoss
    from opacus import PrivacyEngine

    spec = TrainingSpec(dp_sgd=DPSGDSpec(enabled=True, epsilon=1.0), batch_size=2)
    model = build_model(spec)
    assert not any(isinstance(m, nn.InstanceNorm3d) and m.affine for m in model.modules())
    assert count_parameters(model) < 1_500_000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 16, 16, 16, generator=gen)
    y = (torch.rand(4, 3, 16, 16, 16, generator=gen) > 0.7).float()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    engine = PrivacyEngine(accountant="rdp")
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
    )
    before = [w.copy() for w in get_weights(dp_model)]
    xb, yb = next(iter(dp_loader))
    dp_opt.zero_grad()
    DiceLoss(sigmoid=True)(dp_model(xb), yb).backward()
    assert all(p.grad_sample.shape[0] == 2 for p in dp_model.parameters() if p.requires_grad)
    dp_opt.step()
    after = get_weights(dp_model)  # unwrapped names: same layout as the plain model
    assert any((a != b).any() for a, b in zip(before, after, strict=True))
    assert 0 < engine.get_epsilon(1e-5) < float("inf")
    fresh = build_model(spec)
    set_weights(fresh, after)
    assert all((a == b).all() for a, b in zip(get_weights(fresh), after, strict=True))
