"""The paper's per-institution seeded splits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.data import make_federation

from securefed.data import load_federation, split_cases, split_sizes
from securefed.errors import DataError

FETS_P1 = [511, 6, 15, 47, 22, 34, 12, 8, 4, 8, 14, 11, 35, 6, 13, 30, 9, 382, 4, 33, 35, 7, 5]


def _fets_partition_of() -> dict[str, int]:
    out: dict[str, int] = {}
    k = 0
    for pid, n in enumerate(FETS_P1, start=1):
        for _ in range(n):
            k += 1
            out[f"FeTS2022_{k:05d}"] = pid
    return out


def _counts(split: dict[str, str], subjects) -> tuple[int, int, int]:
    vals = [split[s] for s in subjects]
    return (vals.count("train"), vals.count("val"), vals.count("test"))


def test_fets2022_partitioning_1_totals_match_the_paper() -> None:
    partition_of = _fets_partition_of()
    split = split_cases(partition_of)
    assert len(split) == 1251
    assert _counts(split, split) == (833, 218, 200)


def test_per_institution_proportions() -> None:
    partition_of = _fets_partition_of()
    split = split_cases(partition_of)
    for pid, n in enumerate(FETS_P1, start=1):
        members = [s for s, p in partition_of.items() if p == pid]
        train, val, test = _counts(split, members)
        assert (train, val, test) == split_sizes(n)
        assert train >= 1
        assert val >= 1
        assert test >= 1
        assert test == n - int(n * 0.85)
        assert train == int((n - test) * 0.8)
    assert split_sizes(511) == (347, 87, 77)
    assert split_sizes(4) == (2, 1, 1)


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        (0, (0, 0, 0)),
        (1, (1, 0, 0)),
        (2, (1, 0, 1)),
        (3, (1, 1, 1)),
        (4, (2, 1, 1)),
        (5, (3, 1, 1)),
    ],
)
def test_tiny_institutions_never_have_empty_train(n: int, sizes: tuple[int, int, int]) -> None:
    assert split_sizes(n) == sizes


def test_deterministic_and_independent_of_listing_order() -> None:
    partition_of = _fets_partition_of()
    items = list(partition_of.items())
    random.Random(1).shuffle(items)
    assert split_cases(partition_of) == split_cases(dict(items))
    assert split_cases(partition_of, seed=0) != split_cases(partition_of, seed=1)


def test_other_partitions_do_not_affect_a_partition() -> None:
    partition_of = _fets_partition_of()
    alone = {s: p for s, p in partition_of.items() if p == 9}
    full = split_cases(partition_of)
    assert split_cases(alone) == {s: full[s] for s in alone}


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    test_fraction=st.floats(0.05, 0.5),
    val_fraction=st.floats(0.05, 0.5),
)
def test_split_properties(
    sizes: list[int], seed: int, test_fraction: float, val_fraction: float
) -> None:
    partition_of = {f"S_{p}_{i}": p for p, n in enumerate(sizes, 1) for i in range(n)}
    split = split_cases(partition_of, seed, test_fraction, val_fraction)
    assert set(split) == set(partition_of)
    for p, n in enumerate(sizes, 1):
        members = [s for s in partition_of if partition_of[s] == p]
        counts = _counts(split, members)
        assert counts == split_sizes(n, test_fraction, val_fraction)
        assert counts[0] >= 1


@pytest.mark.parametrize("kw", [{"seed": -1}, {"test_fraction": 0.0}, {"val_fraction": 1.0}])
def test_bad_split_arguments(kw: dict) -> None:
    with pytest.raises(DataError):
        split_cases({"a": 1}, **kw)


def test_federation_splits_are_stable_when_a_case_is_excluded(tmp_path: Path) -> None:
    listed = make_federation(tmp_path, [6, 4])
    full = split_cases(listed)
    broken = tmp_path / "FeTS2022_00002" / "FeTS2022_00002_t1.nii.gz"
    broken.write_bytes(broken.read_bytes()[:50])
    fed = load_federation(tmp_path)
    assert "FeTS2022_00002" not in fed.cases
    assert fed.splits() == {s: full[s] for s in fed.cases}
