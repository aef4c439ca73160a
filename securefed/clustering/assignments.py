"""clusters.csv, the one file of cluster assignments: ``subject_id, partition_id, split, cluster``.

Written by the study's clustering stage and by ``securefed cluster``; read by the training,
evaluation and report stages and by each site's ClientApp (its own copy: the rows of its cases).
This module is its only reader and writer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from securefed.errors import ConfigError
from securefed.fileio import atomic_write_bytes

__all__ = [
    "COLUMNS",
    "Assignment",
    "cluster_ids",
    "cluster_sites",
    "read_assignments",
    "site_subjects",
    "write_assignments",
]

COLUMNS = ("subject_id", "partition_id", "split", "cluster")
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Assignment:
    """One case's row of clusters.csv."""

    subject_id: str
    partition_id: int
    split: str
    cluster: int


def write_assignments(path: str | Path, rows: Iterable[Assignment]) -> None:
    """Write clusters.csv atomically, rows sorted by subject id."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in sorted(rows, key=lambda a: a.subject_id):
        writer.writerow([r.subject_id, int(r.partition_id), r.split, int(r.cluster)])
    atomic_write_bytes(Path(path), buf.getvalue().encode("utf-8"))


def read_assignments(path: str | Path) -> list[Assignment]:
    """Rows of clusters.csv; a missing file, column or a malformed value raises ConfigError
    naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: assignments file (clusters.csv) not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}")
        out: list[Assignment] = []
        for line, row in enumerate(reader, start=2):
            try:
                item = Assignment(
                    str(row["subject_id"]), int(row["partition_id"]), str(row["split"]),
                    int(row["cluster"]),
                )  # fmt: skip
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"{path}: line {line}: partition_id and cluster must be ints"
                ) from exc
            if item.split not in _SPLITS:
                raise ConfigError(
                    f"{path}: line {line}: split {item.split!r} is not one of {_SPLITS}"
                )
            out.append(item)
    return out


def site_subjects(
    rows: Sequence[Assignment], partition_id: int, split: str, cluster: int | None
) -> list[str]:
    """Subject ids of this site's cases in ``split`` (and ``cluster`` when not None), sorted."""
    return sorted(
        r.subject_id
        for r in rows
        if r.partition_id == int(partition_id)
        and r.split == split
        and (cluster is None or r.cluster == int(cluster))
    )


def cluster_sites(
    rows: Sequence[Assignment], cluster: int | None, split: str = "train"
) -> dict[int, int]:
    """{partition_id: number of ``split`` cases} of the sites holding cases of ``cluster``
    (all clusters when None)."""
    counts: dict[int, int] = {}
    for r in rows:
        if r.split == split and (cluster is None or r.cluster == int(cluster)):
            counts[r.partition_id] = counts.get(r.partition_id, 0) + 1
    return dict(sorted(counts.items()))


def cluster_ids(rows: Sequence[Assignment]) -> list[int]:
    """The cluster ids that occur, sorted."""
    return sorted({r.cluster for r in rows})
