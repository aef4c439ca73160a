"""Segmentation metrics per region (TC, WT, ET) through MONAI, with the paper's empty-mask rule.

Dice (MONAI ``compute_dice``, ``ignore_empty=False``): empty truth and empty prediction score 1;
empty truth with any predicted voxel scores 0; otherwise 2|P&T| / (|P| + |T|).

HD95 (MONAI ``compute_hausdorff_distance``, percentile 95, symmetric, in mm with the voxel spacing):
undefined when the truth or the prediction of a region is empty. Such values are reported as NaN and
counted separately; means over cases skip them (they are never averaged as 0 or as a penalty).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from securefed.errors import EvaluationError
from securefed.models.networks import REGIONS

__all__ = ["REGIONS", "case_metrics", "dice_per_region", "hd95_per_region", "mean_metrics"]


def _as_batch(mask: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(mask)
    if t.ndim != 4 or t.shape[0] != len(REGIONS):
        raise EvaluationError(
            f"{name}: expected a (3, X, Y, Z) mask with channels TC, WT, ET, got shape "
            f"{tuple(t.shape)}"
        )
    return (t > 0).float().unsqueeze(0)


def dice_per_region(
    pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor
) -> np.ndarray:
    """Dice of binary (3, X, Y, Z) masks per region (TC, WT, ET), paper's empty rule."""
    from monai.metrics import compute_dice

    p, t = _as_batch(pred, "prediction"), _as_batch(truth, "truth")
    if p.shape != t.shape:
        raise EvaluationError(f"prediction {tuple(p.shape)} and truth {tuple(t.shape)} differ")
    return compute_dice(p, t, include_background=True, ignore_empty=False)[0].double().numpy()


def hd95_per_region(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """95th percentile symmetric Hausdorff distance per region (mm when ``spacing`` is given);
    NaN where the truth or the prediction of the region is empty."""
    from monai.metrics import compute_hausdorff_distance

    p, t = _as_batch(pred, "prediction"), _as_batch(truth, "truth")
    if p.shape != t.shape:
        raise EvaluationError(f"prediction {tuple(p.shape)} and truth {tuple(t.shape)} differ")
    out = np.full(len(REGIONS), np.nan)
    defined = [bool(p[0, c].any() and t[0, c].any()) for c in range(len(REGIONS))]
    if any(defined):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns on empty masks; handled here
            hd = (
                compute_hausdorff_distance(
                    p,
                    t,
                    include_background=True,
                    percentile=95,
                    spacing=None if spacing is None else [float(s) for s in spacing],
                )[0]
                .double()
                .numpy()
            )
        for c, ok in enumerate(defined):
            if ok and math.isfinite(hd[c]):
                out[c] = hd[c]
    return out


def case_metrics(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    *,
    spacing: Sequence[float] | None = None,
    hd95: bool = True,
) -> dict[str, float]:
    """``dice_tc, dice_wt, dice_et, dice_mean`` (+ ``hd95_tc, hd95_wt, hd95_et``, NaN when
    undefined) for one case."""
    dice = dice_per_region(pred, truth)
    row: dict[str, float] = {f"dice_{r}": float(d) for r, d in zip(REGIONS, dice, strict=True)}
    row["dice_mean"] = float(np.mean(dice))
    if hd95:
        hd = hd95_per_region(pred, truth, spacing)
        row.update({f"hd95_{r}": float(h) for r, h in zip(REGIONS, hd, strict=True)})
    return row


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-case means: Dice over every case; HD95 over the cases where it is defined, with
    ``hd95_<region>_undefined`` = the number of cases skipped (empty truth or prediction)."""
    out: dict[str, float] = {"num_cases": float(len(rows))}
    if not rows:
        return out
    for key in ("dice_tc", "dice_wt", "dice_et", "dice_mean"):
        if key in rows[0]:
            out[key] = float(np.mean([r[key] for r in rows]))
    for region in REGIONS:
        key = f"hd95_{region}"
        if key not in rows[0]:
            continue
        vals = np.array([r[key] for r in rows], dtype=float)
        finite = vals[np.isfinite(vals)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
        out[f"{key}_undefined"] = float(vals.size - finite.size)
    return out
