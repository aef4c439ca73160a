"""clusters.csv: the one reader and writer, and the site and cluster views over it."""

from __future__ import annotations

import pytest
from support.flower import write_assignments

from securefed.clustering.assignments import (
    Assignment,
    cluster_ids,
    cluster_sites,
    read_assignments,
    site_subjects,
)
from securefed.clustering.assignments import (
    write_assignments as write_clusters,
)
from securefed.errors import ConfigError


def test_assignments_views(tmp_path):
    path = write_assignments(
        tmp_path / "clusters.csv",
        {1: [("train", 0), ("train", 1), ("val", 0)], 2: [("train", 1), ("test", 1)]},
    )
    rows = read_assignments(path)
    assert site_subjects(rows, 1, "train", None) == ["S01_000", "S01_001"]
    assert site_subjects(rows, 1, "train", 1) == ["S01_001"]
    assert cluster_sites(rows, 1) == {1: 1, 2: 1}
    assert cluster_sites(rows, None) == {1: 2, 2: 1}
    assert cluster_ids(rows) == [0, 1]
    with pytest.raises(ConfigError, match="not found"):
        read_assignments(tmp_path / "nope.csv")


def test_round_trip_sorted_and_bad_rows_named(tmp_path):
    rows = [Assignment("b", 2, "test", 1), Assignment("a", 1, "train", 0)]
    path = tmp_path / "clusters.csv"
    write_clusters(path, rows)
    assert path.read_text().splitlines() == [
        "subject_id,partition_id,split,cluster",
        "a,1,train,0",
        "b,2,test,1",
    ]
    assert read_assignments(path) == sorted(rows, key=lambda r: r.subject_id)
    path.write_text("subject_id,partition_id,split,cluster\na,1,train,x\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_assignments(path)
    path.write_text("subject_id,partition_id,split,cluster\na,1,holdout,0\n")
    with pytest.raises(ConfigError, match="holdout"):
        read_assignments(path)
    path.write_text("subject_id,split,cluster\na,train,0\n")
    with pytest.raises(ConfigError, match="partition_id"):
        read_assignments(path)
