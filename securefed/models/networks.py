"""Segmentation networks: the paper's small DynUNet and a DP-SGD capable 3D UNet.

Both take the four MR modalities (flair, t1, t1ce, t2) and return three logits per voxel for the
nested BraTS regions (TC, WT, ET); apply a sigmoid to each channel (the regions overlap).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from securefed.errors import ConfigError

__all__ = [
    "FILTERS",
    "IN_CHANNELS",
    "OUT_CHANNELS",
    "REGIONS",
    "TRAINABLE_PREFIXES",
    "build_dp_unet",
    "build_dynunet_small",
    "build_model",
    "count_parameters",
    "freeze_untrained",
    "is_trained",
]

IN_CHANNELS = 4
OUT_CHANNELS = 3
REGIONS: tuple[str, ...] = ("tc", "wt", "et")
FILTERS: tuple[int, ...] = (16, 32, 64, 128)


def _add_missing_conv_bias(model: nn.Module) -> None:
    """Give every (transposed) convolution a bias, as the paper's code does (MONAI's DynUNet blocks
    have none). Biases are initialised like PyTorch's default, U(+-1/sqrt(fan_in))."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d | nn.ConvTranspose3d) and module.bias is None:
            weight = module.weight
            if isinstance(module, nn.ConvTranspose3d):
                fan_in = weight.shape[0] * math.prod(weight.shape[2:])
                out_channels = weight.shape[1] * module.groups
            else:
                fan_in = weight.shape[1] * math.prod(weight.shape[2:])
                out_channels = weight.shape[0]
            bound = 1.0 / math.sqrt(fan_in)
            bias = torch.empty(out_channels, dtype=weight.dtype, device=weight.device)
            nn.init.uniform_(bias, -bound, bound)
            module.bias = nn.Parameter(bias)


def build_dynunet_small() -> nn.Module:
    """The paper's DynUNet: filters 16-32-64-128, kernels 3, strides (1,2,2,2), instance norm
    without affine, LeakyReLU 0.01, a bias on every convolution; 1,401,891 parameters."""
    from monai.networks.nets import DynUNet

    model = DynUNet(
        spatial_dims=3,
        in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS,
        kernel_size=[3, 3, 3, 3],
        strides=[1, 2, 2, 2],
        upsample_kernel_size=[2, 2, 2],
        filters=list(FILTERS),
        norm_name=("instance", {"affine": False}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=False,
        res_block=False,
        trans_bias=True,
    )
    _add_missing_conv_bias(model)
    return model


def build_dp_unet() -> nn.Module:
    """A 3D UNet that Opacus can train (DP-SGD): MONAI UNet, same widths (16-32-64-128), strides 2,
    instance norm without affine, LeakyReLU 0.01 (not in place), two residual units per level.

    DynUNet cannot be trained by Opacus (in-place activations, functorch failure); this variant has
    only Conv3d/ConvTranspose3d parameters, for which Opacus has per-sample gradient samplers.
    """
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS,
        channels=FILTERS,
        strides=(2, 2, 2),
        kernel_size=3,
        up_kernel_size=3,
        num_res_units=2,
        act=("leakyrelu", {"negative_slope": 0.01, "inplace": False}),
        norm=("instance", {"affine": False}),
        bias=True,
    )


def build_model(spec: object, *, dp: bool | None = None) -> nn.Module:
    """The segmentation model a `TrainingSpec` asks for, initialised from ``spec.seed``.

    ``dp`` selects the Opacus-capable variant; by default it follows ``spec.dp_sgd.enabled``;
    ``spec.model = "dp-unet"`` selects it in any case.
    Initialisation is seeded without touching the global RNG state, so every party that builds
    the model from the same protocol gets the same starting weights.
    """
    name = getattr(spec, "model", "dynunet-small")
    if name not in ("dynunet-small", "dp-unet"):
        raise ConfigError(
            f"training.model: unknown model {name!r}; the known models are 'dynunet-small' and "
            "'dp-unet'"
        )
    if dp is None:
        dp_spec = getattr(spec, "dp_sgd", None)
        dp = bool(getattr(dp_spec, "enabled", False))
    seed = int(getattr(spec, "seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_dp_unet() if dp or name == "dp-unet" else build_dynunet_small()
    freeze_untrained(model, str(getattr(spec, "trainable", "all")))
    return model


# ``training.trainable``: the dp-unet's parameter-name prefixes each choice trains. MONAI's UNet
# nests its levels: model.0 is the full-resolution encoder block, model.1 every deeper level,
# model.2 the last decoder block (it produces the logits).
TRAINABLE_PREFIXES: dict[str, tuple[str, ...]] = {
    "outer-blocks": ("model.0.", "model.2."),
    "output-block": ("model.2.",),
}
BIASES = "biases"  # every bias term of the model (bias-only finetuning, DP-BiTFiT)


def is_trained(trainable: str, name: str) -> bool:
    """Whether ``trainable`` (training.trainable) names the parameter ``name``."""
    if trainable == "all":
        return True
    if trainable == BIASES:
        return name.endswith(".bias")
    prefixes = TRAINABLE_PREFIXES.get(trainable)
    if prefixes is None:
        raise ConfigError(
            f"training.trainable: unknown choice {trainable!r}; the known ones are 'all', "
            + ", ".join(repr(k) for k in (*TRAINABLE_PREFIXES, BIASES))
        )
    return name.startswith(prefixes)


def freeze_untrained(model: nn.Module, trainable: str) -> None:
    """Set ``requires_grad = False`` on every parameter ``trainable`` does not name (``all``:
    none); local training and DP-SGD then update, clip and noise only the named ones."""
    if trainable == "all":
        return
    names = [n for n, _ in model.named_parameters()]
    if not names[0].startswith("model.0.") or not any(is_trained(trainable, n) for n in names):
        raise ConfigError(
            f"training.trainable = {trainable!r}: names parameters of the dp-unet model only "
            f"(this model's first is {names[0]!r})"
        )
    for n, p in model.named_parameters():
        p.requires_grad_(is_trained(trainable, n))


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
