"""Per-case metric tables and their summaries per site, cluster, scanner or method.

Every summary follows :func:`securefed.evaluation.metrics.mean_metrics` (the one convention): Dice
is the mean over every case; HD95 the mean over the cases where it is defined, with the number of
undefined (empty-mask) cases alongside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from securefed.errors import EvaluationError
from securefed.evaluation.metrics import mean_metrics
from securefed.models.networks import REGIONS

__all__ = ["METRIC_COLUMNS", "case_table", "summarize"]

METRIC_COLUMNS: tuple[str, ...] = (
    *(f"dice_{r}" for r in REGIONS),
    "dice_mean",
    *(f"hd95_{r}" for r in REGIONS),
)


def case_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    annotations: pd.DataFrame | None = None,
    **constant_columns: Any,
) -> pd.DataFrame:
    """One row per case from ``evaluate_local(...)["cases"]`` rows. ``annotations`` (indexed by
    or holding ``subject_id``: e.g. partition_id, split, cluster, scanner from clusters.csv and the
    synthetic truth.csv) are joined on ``subject_id``; ``constant_columns`` (e.g. method="fedavg",
    site="site-1") are added to every row."""
    df = pd.DataFrame([dict(r) for r in rows])
    if df.empty:
        df = pd.DataFrame(columns=["subject_id", *METRIC_COLUMNS[:4]])
    if "subject_id" not in df.columns:
        raise EvaluationError("case_table: every row needs a subject_id")
    for key, value in constant_columns.items():
        df[key] = value
    if annotations is not None:
        ann = annotations.reset_index() if "subject_id" not in annotations.columns else annotations
        if "subject_id" not in ann.columns:
            raise EvaluationError("case_table: annotations need a subject_id column or index")
        extra = [c for c in ann.columns if c == "subject_id" or c not in df.columns]
        df = df.merge(ann[extra], on="subject_id", how="left")
    return df


def summarize(table: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """Per-group means of the metric columns with ``n`` (cases) and ``hd95_<r>_undefined``
    (cases whose HD95 is undefined and therefore not in the HD95 mean)."""
    keys = [by] if isinstance(by, str) else list(by)
    missing = [k for k in keys if k not in table.columns]
    if missing:
        raise EvaluationError(
            f"summarize: column(s) {missing} not in the case table (have {list(table.columns)})"
        )
    metrics = [c for c in METRIC_COLUMNS if c in table.columns]
    records: list[dict[str, Any]] = []
    for group, part in table.groupby(keys, sort=True, dropna=False):
        values = group if isinstance(group, tuple) else (group,)
        rec: dict[str, Any] = dict(zip(keys, values, strict=True))
        rec["n"] = len(part)
        summary = mean_metrics(part[metrics].to_dict("records"))
        for col in metrics:
            rec[col] = summary.get(col, float("nan"))
            if col.startswith("hd95_"):
                rec[f"{col}_undefined"] = int(summary.get(f"{col}_undefined", 0))
        records.append(rec)
    return pd.DataFrame(records)
