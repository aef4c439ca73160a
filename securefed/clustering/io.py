"""Read the collected feature table (features.csv) and a synthetic truth.csv
(docs/interfaces.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from securefed.errors import DataError, FeatureError
from securefed.radiomics.table import FeatureTable

__all__ = ["read_feature_table", "read_truth"]

_ID_COLUMNS = ("subject_id", "partition_id", "split")
_SPLITS = {"train", "val", "test"}


def read_feature_table(path: str | Path) -> FeatureTable:
    """Read ``features.csv`` (or a folder holding it). Refuses NaN, missing ids and bad splits."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / "features.csv"
    try:
        df = pd.read_csv(path, dtype={"subject_id": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the feature table ({exc})") from exc
    missing = [c for c in _ID_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected {list(_ID_COLUMNS)} first")
    columns = [c for c in df.columns if c not in _ID_COLUMNS]
    if not columns or len(df) == 0:
        raise DataError(f"{path}: no feature columns or no rows")
    bad_split = sorted(set(df["split"].astype(str)) - _SPLITS)
    if bad_split:
        raise DataError(f"{path}: unknown split values {bad_split}; use train/val/test")
    try:
        matrix = df[columns].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric feature values ({exc})") from exc
    bad = np.argwhere(~np.isfinite(matrix))
    if bad.size:
        r, c = bad[0]
        raise DataError(
            f"{path}: {len(bad)} NaN/infinite values, first at case {df['subject_id'].iloc[r]} "
            f"column {columns[c]}; re-extract that case"
        )
    if df["subject_id"].duplicated().any():
        dup = df["subject_id"][df["subject_id"].duplicated()].iloc[0]
        raise DataError(f"{path}: subject_id {dup} appears twice")
    try:
        parts = df["partition_id"].to_numpy(dtype=np.int64).tolist()
        return FeatureTable(
            df["subject_id"].tolist(), parts, df["split"].astype(str).tolist(), columns, matrix
        )
    except (ValueError, FeatureError) as exc:
        raise DataError(f"{path}: {exc}") from exc


def read_truth(path: str | Path, subject_ids: list[str]) -> dict[str, np.ndarray]:
    """Columns of a synthetic ``truth.csv`` (``scanner``, ``institution`` when present) aligned
    with ``subject_ids``. Institution falls back to ``partition_id``."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"subject_id": str})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read truth.csv ({exc})") from exc
    if "subject_id" not in df.columns:
        raise DataError(f"{path}: truth.csv needs a subject_id column")
    df = df.set_index("subject_id")
    absent = [s for s in subject_ids if s not in df.index]
    if absent:
        raise DataError(f"{path}: {len(absent)} cases missing from truth.csv, e.g. {absent[0]}")
    out: dict[str, np.ndarray] = {}
    for name, candidates in (
        ("scanner", ("scanner", "scanner_id", "scanner_type")),
        ("institution", ("institution", "institution_id", "partition_id")),
    ):
        for col in candidates:
            if col in df.columns:
                out[name] = df.loc[subject_ids, col].astype(str).to_numpy()
                break
    if not out:
        raise DataError(f"{path}: truth.csv has neither a scanner nor an institution column")
    return out
