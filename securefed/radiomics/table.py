"""FeatureTable: a table of per-case radiomic vectors, which cannot be printed, pickled or
serialised. A site holds its raw table; the server holds the collected (released) one.

It holds subject ids, partition ids, splits, column names and a read-only float64 matrix. Its
repr/str show only the shape; ``pickle``/``copy`` refuse it (``__reduce__`` raises) and it has no
``__dict__`` for ``json.dumps(default=vars)`` to reach. The only way out of the process is the
explicit, site-local :func:`securefed.radiomics.storage.save_table` (FEATDIR); releasing values
off the site is the privacy/transport layers' job, on protected copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from securefed.errors import FeatureError

__all__ = ["SPLITS", "FeatureTable"]

SPLITS = ("train", "val", "test")


class FeatureTable:
    """Raw per-case radiomic features of one site (never leaves the site as such)."""

    __slots__ = ("_columns", "_partition_ids", "_splits", "_subject_ids", "_values")

    def __init__(
        self,
        subject_ids: Sequence[str],
        partition_ids: Sequence[int],
        splits: Sequence[str],
        columns: Sequence[str],
        values: np.ndarray,
    ) -> None:
        matrix = np.array(values, dtype=np.float64, copy=True)
        n = len(subject_ids)
        if matrix.ndim != 2 or matrix.shape != (n, len(columns)):
            raise FeatureError(
                f"feature table: values of shape {matrix.shape} do not match {n} cases x "
                f"{len(columns)} columns"
            )
        if len(partition_ids) != n or len(splits) != n:
            raise FeatureError(
                "feature table: subject_ids, partition_ids and splits differ in length"
            )
        if len(set(subject_ids)) != n:
            raise FeatureError("feature table: subject ids are not unique")
        if len(set(columns)) != len(columns):
            raise FeatureError("feature table: column names are not unique")
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise FeatureError(f"feature table: split {bad[0]!r} is not one of {SPLITS}")
        if not np.all(np.isfinite(matrix)):
            r, c = np.argwhere(~np.isfinite(matrix))[0]
            raise FeatureError(
                f"feature table: case {subject_ids[r]}, feature {columns[c]} is not finite"
            )
        matrix.setflags(write=False)
        self._subject_ids = tuple(str(s) for s in subject_ids)
        self._partition_ids = tuple(int(p) for p in partition_ids)
        self._splits = tuple(str(s) for s in splits)
        self._columns = tuple(str(c) for c in columns)
        self._values = matrix

    # -- read-only views -----------------------------------------------------------------------
    @property
    def subject_ids(self) -> tuple[str, ...]:
        return self._subject_ids

    @property
    def partition_ids(self) -> tuple[int, ...]:
        return self._partition_ids

    @property
    def splits(self) -> tuple[str, ...]:
        return self._splits

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    @property
    def values(self) -> np.ndarray:
        """The raw (n_cases, n_columns) float64 matrix, read-only. Site-local data."""
        return self._values

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self._subject_ids), len(self._columns))

    def __len__(self) -> int:
        return len(self._subject_ids)

    @property
    def fit_mask(self) -> np.ndarray:
        """Rows a model may be fitted on: train and val (never test)."""
        return np.array([s != "test" for s in self._splits], dtype=bool)

    @property
    def partition_array(self) -> np.ndarray:
        """Partition ids as an int64 array (one per row)."""
        return np.array(self._partition_ids, dtype=np.int64)

    def partition(self, partition_id: int) -> FeatureTable:
        """The rows of one partition (institution)."""
        return self.select(self.partition_array == int(partition_id))

    def select(self, mask: Sequence[bool] | np.ndarray) -> FeatureTable:
        """The rows where ``mask`` is true (e.g. ``[s != 'test' for s in t.splits]``)."""
        keep = np.asarray(mask, dtype=bool)
        if keep.shape != (len(self),):
            raise FeatureError(
                f"feature table: row mask of shape {keep.shape}, need ({len(self)},)"
            )
        idx = np.flatnonzero(keep)
        return FeatureTable(
            [self._subject_ids[i] for i in idx],
            [self._partition_ids[i] for i in idx],
            [self._splits[i] for i in idx],
            self._columns,
            self._values[idx],
        )

    # -- redaction and refusal -----------------------------------------------------------------
    def __repr__(self) -> str:
        n, m = self.shape
        return f"FeatureTable({n} cases x {m} features, values redacted)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "FeatureTable holds raw site data and cannot be pickled or copied; use "
            "securefed.radiomics.save_table to write it to the site's FEATDIR"
        )

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        self.__reduce__()

    def __getstate__(self) -> NoReturn:
        self.__reduce__()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureTable):
            return NotImplemented
        return (
            self._subject_ids == other._subject_ids
            and self._partition_ids == other._partition_ids
            and self._splits == other._splits
            and self._columns == other._columns
            and np.array_equal(self._values, other._values)
        )

    __hash__ = None  # type: ignore[assignment]
