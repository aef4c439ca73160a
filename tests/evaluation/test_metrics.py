"""Dice and HD95 per region with the paper's empty rule, and the summary tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from securefed.errors import EvaluationError
from securefed.evaluation import (
    case_metrics,
    case_table,
    dice_per_region,
    hd95_per_region,
    mean_metrics,
    summarize,
)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((3, 12, 12, 12), np.uint8), np.zeros((3, 12, 12, 12), np.uint8)


def test_dice_hand_computed_and_empty_rule() -> None:
    pred, truth = _masks()
    truth[1, 2:5, 2:5, 2:5] = 1  # WT: 27 voxels
    pred[1, 3:6, 2:5, 2:5] = 1  # shifted by one: 18 overlap -> 2*18/54
    pred[2, 0, 0, 0] = 1  # ET: empty truth, one predicted voxel -> 0
    # TC: empty truth and empty prediction -> 1
    dice = dice_per_region(pred, truth)
    assert dice == pytest.approx([1.0, 2 * 18 / 54, 0.0])


def test_dice_empty_prediction_nonempty_truth_is_zero() -> None:
    pred, truth = _masks()
    truth[0, 4, 4, 4] = 1
    assert dice_per_region(pred, truth)[0] == 0.0


def test_hd95_hand_computed_in_mm_and_nan_when_undefined() -> None:
    pred, truth = _masks()
    truth[1, 2:5, 2:5, 2:5] = 1
    pred[1, 3:6, 2:5, 2:5] = 1
    pred[2, 0, 0, 0] = 1
    hd = hd95_per_region(pred, truth, spacing=(2.0, 2.0, 2.0))
    assert math.isnan(hd[0])  # both empty
    assert hd[1] == pytest.approx(2.0)  # one voxel shift at 2 mm
    assert math.isnan(hd[2])  # empty truth
    truth[0, 5, 5, 5] = 1
    assert math.isnan(hd95_per_region(pred, truth)[0])  # empty prediction


def test_case_and_mean_metrics_skip_undefined_hd95() -> None:
    pred, truth = _masks()
    truth[1, 2:5, 2:5, 2:5] = 1
    pred[1, 2:5, 2:5, 2:5] = 1
    a = case_metrics(pred, truth, spacing=(1, 1, 1))
    assert a["dice_tc"] == 1.0
    assert a["dice_wt"] == 1.0
    assert a["dice_et"] == 1.0
    assert a["hd95_wt"] == 0.0
    assert math.isnan(a["hd95_tc"])
    pred2 = pred.copy()
    pred2[1, 5:8, 2:5, 2:5] = 1  # 27 extra voxels: dice 2*27/81
    b = case_metrics(pred2, truth)
    means = mean_metrics([a, b])
    assert means["num_cases"] == 2
    assert means["dice_wt"] == pytest.approx((1 + 2 * 27 / 81) / 2)
    assert means["hd95_tc_undefined"] == 2
    assert math.isnan(means["hd95_tc"])
    assert means["hd95_wt_undefined"] == 0
    assert "hd95_wt" not in case_metrics(pred, truth, hd95=False)


def test_shape_errors_name_the_problem() -> None:
    with pytest.raises(EvaluationError, match="TC, WT, ET"):
        dice_per_region(np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 4, 4)))
    with pytest.raises(EvaluationError, match="differ"):
        dice_per_region(np.zeros((3, 4, 4, 4)), np.zeros((3, 4, 4, 5)))


def test_tables_per_group() -> None:
    rows = [
        {"subject_id": "a", "dice_tc": 1.0, "dice_wt": 0.5, "dice_et": 0.0, "dice_mean": 0.5,
         "hd95_tc": float("nan"), "hd95_wt": 2.0, "hd95_et": float("nan")},
        {"subject_id": "b", "dice_tc": 0.0, "dice_wt": 1.0, "dice_et": 1.0, "dice_mean": 2 / 3,
         "hd95_tc": 4.0, "hd95_wt": 4.0, "hd95_et": 1.0},
        {"subject_id": "c", "dice_tc": 0.5, "dice_wt": 0.5, "dice_et": 0.5, "dice_mean": 0.5,
         "hd95_tc": 1.0, "hd95_wt": 1.0, "hd95_et": 1.0},
    ]  # fmt: skip
    ann = pd.DataFrame({"subject_id": ["a", "b", "c"], "cluster": [0, 0, 1], "scanner": "s"})
    table = case_table(rows, annotations=ann, method="fedavg")
    assert list(table["method"].unique()) == ["fedavg"]
    per_cluster = summarize(table, "cluster").set_index("cluster")
    assert per_cluster.loc[0, "n"] == 2
    assert per_cluster.loc[0, "dice_wt"] == pytest.approx(0.75)
    assert per_cluster.loc[0, "hd95_tc"] == pytest.approx(4.0)
    assert per_cluster.loc[0, "hd95_tc_undefined"] == 1
    assert summarize(table, ["method", "scanner"]).loc[0, "n"] == 3
    with pytest.raises(EvaluationError, match="site"):
        summarize(table, "site")
