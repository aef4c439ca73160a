"""Segmentation models: the paper's small DynUNet and a DP-SGD capable variant."""

from securefed.models.networks import (
    FILTERS,
    IN_CHANNELS,
    OUT_CHANNELS,
    REGIONS,
    build_dp_unet,
    build_dynunet_small,
    build_model,
    count_parameters,
)

__all__ = [
    "FILTERS",
    "IN_CHANNELS",
    "OUT_CHANNELS",
    "REGIONS",
    "build_dp_unet",
    "build_dynunet_small",
    "build_model",
    "count_parameters",
]
