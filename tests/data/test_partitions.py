"""Partition files and their join with the cases on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.data import make_case, make_federation, write_partitioning

from securefed.data import load_federation, read_partitioning
from securefed.errors import NoCasesError, PartitionError


def test_read_partitioning_keeps_file_order_and_tolerates_bom(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("\ufeffPartition_ID,Subject_ID\n2,FeTS2022_00002\n\n1,FeTS2022_00001\n")
    assert read_partitioning(path) == {"FeTS2022_00002": 2, "FeTS2022_00001": 1}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("Subject,Partition\n1,a\n", "line 1: header"),
        ("Partition_ID,Subject_ID\n", "lists no cases"),
        ("Partition_ID,Subject_ID\nx,FeTS2022_00001\n", "line 2: Partition_ID 'x'"),
        ("Partition_ID,Subject_ID\n0,FeTS2022_00001\n", "line 2: Partition_ID '0'"),
        ("Partition_ID,Subject_ID\n1,FeTS2022_00001,7\n", "line 2: 3 fields"),
        ("Partition_ID,Subject_ID\n1,../etc\n", "line 2: Subject_ID"),
        ("Partition_ID,Subject_ID\n1,A_1\n2,A_2\n3,A_1\n", "line 4: A_1 is already listed on"),
    ],
)
def test_bad_partition_files_name_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "partitioning_1.csv"
    path.write_text(text)
    with pytest.raises(PartitionError, match=match) as info:
        read_partitioning(path)
    assert "partitioning_1.csv" in str(info.value)


def test_extra_columns_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("Subject_ID,Site,Partition_ID\nFeTS2022_00001,x,3\n")
    assert read_partitioning(path) == {"FeTS2022_00001": 3}


def test_missing_partition_file(tmp_path: Path) -> None:
    make_case(tmp_path, "FeTS2022_00001")
    with pytest.raises(PartitionError, match="partitioning_2.csv not found"):
        load_federation(tmp_path, "partitioning_2")


def test_join_reports_both_directions(tmp_path: Path) -> None:
    listed = make_federation(tmp_path, [2, 1])
    make_case(tmp_path, "FeTS2022_00099")  # on disk, not listed
    write_partitioning(tmp_path, {**listed, "FeTS2022_00050": 2})  # listed, not on disk
    fed = load_federation(tmp_path)
    assert sorted(fed.cases) == sorted(listed)
    assert fed.partition_of == listed
    reasons = {p.subject_id: p.problem for p in fed.problems}
    assert "listed in partitioning_1.csv but no folder" in reasons["FeTS2022_00050"]
    assert "on disk but not listed in partitioning_1.csv" in reasons["FeTS2022_00099"]
    assert fed.summary().startswith("3 cases loaded, 2 excluded: FeTS2022_00050")
    assert fed.partitions == {1: ["FeTS2022_00001", "FeTS2022_00002"], 2: ["FeTS2022_00003"]}


def test_partition_file_by_path_and_none(tmp_path: Path) -> None:
    listed = make_federation(tmp_path / "root", [1, 1])
    other = write_partitioning(tmp_path, {s: 7 for s in listed}, name="custom")
    assert set(load_federation(tmp_path / "root", other).partition_of.values()) == {7}
    assert set(load_federation(tmp_path / "root", None).partition_of.values()) == {0}


def test_nothing_listed_on_disk_is_no_cases(tmp_path: Path) -> None:
    make_case(tmp_path, "FeTS2022_00001")
    write_partitioning(tmp_path, {"FeTS2022_00002": 1})
    with pytest.raises(NoCasesError, match="0 cases loaded, 2 excluded"):
        load_federation(tmp_path)
