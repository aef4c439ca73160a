"""A site's view of the study assignments
(clusters.csv: subject_id, partition_id, split, cluster)."""

from __future__ import annotations

import csv
from pathlib import Path

from securefed.errors import ConfigError

__all__ = ["site_subjects", "cluster_sites"]

COLUMNS = ("subject_id", "partition_id", "split", "cluster")


def _rows(path: Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: assignments file (clusters.csv) not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        try:
            int(row["partition_id"])
            int(row["cluster"])
        except ValueError as exc:
            raise ConfigError(f"{path}: line {i}: partition_id and cluster must be ints") from exc
    return rows


def site_subjects(path: Path, partition_id: int, split: str, cluster: int | None) -> list[str]:
    """Subject ids of this site's cases in ``split`` (and ``cluster`` when not None), sorted."""
    return sorted(
        row["subject_id"]
        for row in _rows(path)
        if int(row["partition_id"]) == int(partition_id)
        and row["split"] == split
        and (cluster is None or int(row["cluster"]) == int(cluster))
    )


def cluster_sites(path: Path, cluster: int | None, split: str = "train") -> dict[int, int]:
    """{partition_id: number of ``split`` cases} of the sites holding cases of ``cluster``
    (all clusters when None)."""
    counts: dict[int, int] = {}
    for row in _rows(path):
        if row["split"] == split and (cluster is None or int(row["cluster"]) == int(cluster)):
            pid = int(row["partition_id"])
            counts[pid] = counts.get(pid, 0) + 1
    return dict(sorted(counts.items()))
