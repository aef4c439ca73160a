"""Evaluation: sliding-window inference, Dice/HD95 per region with the paper's empty rule, and
per case/site/cluster/scanner tables."""

from securefed.evaluation.inference import predict_logits, predict_mask
from securefed.evaluation.metrics import (
    REGIONS,
    case_metrics,
    dice_per_region,
    hd95_per_region,
    mean_metrics,
)
from securefed.evaluation.tables import METRIC_COLUMNS, case_table, summarize

__all__ = [
    "METRIC_COLUMNS",
    "REGIONS",
    "case_metrics",
    "case_table",
    "dice_per_region",
    "hd95_per_region",
    "mean_metrics",
    "predict_logits",
    "predict_mask",
    "summarize",
]
