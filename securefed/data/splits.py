"""The paper's per-institution seeded splits.

Rule, per partition (institution), on its subject ids in ascending order:
1. permute with ``numpy.random.RandomState(seed).permutation(n)``; the first
   ``n_tv = floor(n * (1 - test_fraction))`` cases are train+val, the rest test;
2. shuffle the train+val list in place with ``numpy.random.RandomState(seed).shuffle``; the first
   ``n_train = floor(n_tv * (1 - val_fraction))`` are train, the rest val.
Tiny partitions: ``n_tv`` is at least 1 and ``n_train`` at least 1, so train is never empty (1 case:
train; 2: train + test; 3: train, val, test; 4: 2 train, 1 val, 1 test). This is the rule of the
CFFL code (pandas ``sample(frac=1, random_state=seed)``, then ``np.random.seed(seed)`` +
``np.random.shuffle``) and gives 833 train / 218 val / 200 test on FeTS2022 partitioning_1.
The legacy RandomState stream is stable across numpy versions, so splits are reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from securefed.errors import DataError

__all__ = ["SPLITS", "Split", "split_cases", "split_sizes"]

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


def split_sizes(
    n: int, test_fraction: float = 0.15, val_fraction: float = 0.2
) -> tuple[int, int, int]:
    """(train, val, test) sizes of a partition of ``n`` cases under the rule above."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if n == 0:
        return (0, 0, 0)
    n_tv = max(1, int(n * (1 - test_fraction)))
    n_train = max(1, int(n_tv * (1 - val_fraction)))
    return (n_train, n_tv - n_train, n - n_tv)


def split_cases(
    partition_of: Mapping[str, int],
    seed: int = 0,
    test_fraction: float = 0.15,
    val_fraction: float = 0.2,
    patient_of: Mapping[str, str] | None = None,
) -> dict[str, Split]:
    """Subject id -> "train" | "val" | "test", per partition, deterministic for a given seed.

    Pass the full partition file (:func:`read_partitioning`) rather than only the cases that
    loaded, so that excluding one broken case does not reshuffle everybody else. With
    ``patient_of`` (subject -> patient) the rule runs on the patients (their ids in ascending
    order) and every case takes its patient's split, so no patient is in two splits; without it
    (or when every patient has one case of the same name) the result is the paper's.
    """
    if patient_of:
        unit_of = {s: patient_of.get(s, s) for s in partition_of}
        units = {unit_of[s]: pid for s, pid in partition_of.items()}
        by_unit = split_cases(units, seed, test_fraction, val_fraction)
        return {s: by_unit[unit_of[s]] for s in sorted(partition_of)}
    for name, frac in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 < frac < 1:
            raise DataError(f"{name} must be between 0 and 1 (exclusive), got {frac}")
    if not 0 <= seed < 2**32:
        raise DataError(f"split seed must be in [0, 2**32), got {seed}")
    by_partition: dict[int, list[str]] = {}
    for subject, pid in partition_of.items():
        by_partition.setdefault(pid, []).append(subject)
    out: dict[str, Split] = {}
    for pid in sorted(by_partition):
        subjects = sorted(by_partition[pid])
        n_train, n_val, _ = split_sizes(len(subjects), test_fraction, val_fraction)
        order = np.random.RandomState(seed).permutation(len(subjects))
        shuffled = [subjects[i] for i in order]
        n_tv = n_train + n_val
        train_val, test = shuffled[:n_tv], shuffled[n_tv:]
        np.random.RandomState(seed).shuffle(train_val)
        for s in train_val[:n_train]:
            out[s] = "train"
        for s in train_val[n_train:]:
            out[s] = "val"
        for s in test:
            out[s] = "test"
    return {s: out[s] for s in sorted(out)}
