"""FeTS2022 partition files (``partitioning_1.csv``, ``partitioning_2.csv``).

Format: a header ``Partition_ID,Subject_ID`` then one row per case, e.g. ``1,FeTS2022_01000``.
Partition ids are integers >= 1 (the institution in partitioning_1). An optional ``Patient_ID``
column groups the cases of one patient (several scans, time points): the privacy unit is the
patient, so DP releases bound each patient's contribution and the splits keep a patient's cases
together. Without it every case is its own patient (FeTS2022 lists one case per patient).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from securefed.errors import PartitionError

__all__ = [
    "PARTITION_COLUMNS",
    "PATIENT_COLUMN",
    "read_partitioning",
    "read_patients",
    "resolve_partitioning",
    "valid_subject_id",
]

PARTITION_COLUMNS = ("Partition_ID", "Subject_ID")
PATIENT_COLUMN = "Patient_ID"
_SUBJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_partitioning(root: str | Path, partitioning: str | Path) -> Path:
    """The partition CSV for ``partitioning``: a name such as ``partitioning_1`` (looked up as
    ``<root>/partitioning_1.csv``) or a path to a CSV file."""
    text = str(partitioning)
    if text.endswith(".csv") or "/" in text or "\\" in text:
        path = Path(partitioning)
    else:
        path = Path(root) / f"{text}.csv"
    if not path.is_file():
        raise PartitionError(
            f"partition file {path} not found; FeTS2022 ships partitioning_1.csv and "
            "partitioning_2.csv in the data root; pass the right name or path"
        )
    return path


def _header_index(path: Path, header: list[str]) -> tuple[int, int]:
    names = [h.strip().lstrip("\ufeff") for h in header]
    try:
        return names.index(PARTITION_COLUMNS[0]), names.index(PARTITION_COLUMNS[1])
    except ValueError:
        raise PartitionError(
            f"{path}, line 1: header {','.join(names)!r} lacks the columns "
            f"{','.join(PARTITION_COLUMNS)}; the file must start with 'Partition_ID,Subject_ID'"
        ) from None


def read_partitioning(csv_path: str | Path) -> dict[str, int]:
    """Subject id -> partition id, in file order. Raises PartitionError naming the file and line
    for a bad header, a bad or duplicated row, or an empty file."""
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PartitionError(f"cannot read partition file {path}: {exc}") from exc
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None:
        raise PartitionError(f"{path} is empty; expected the header 'Partition_ID,Subject_ID'")
    pid_col, sid_col = _header_index(path, header)
    out: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise PartitionError(
                f"{path}, line {line_no}: {len(row)} fields, expected {len(header)} "
                f"({','.join(header)}); fix the row"
            )
        pid_text, subject = row[pid_col].strip(), row[sid_col].strip()
        if not pid_text.isascii() or not pid_text.isdigit() or int(pid_text) < 1:
            raise PartitionError(
                f"{path}, line {line_no}: Partition_ID {pid_text!r} is not an integer >= 1"
            )
        pid = int(pid_text)
        if not _SUBJECT.match(subject):
            raise PartitionError(
                f"{path}, line {line_no}: Subject_ID {subject!r} is not a case folder name "
                "(letters, digits, '.', '_', '-')"
            )
        if subject in out:
            raise PartitionError(
                f"{path}, line {line_no}: {subject} is already listed on line "
                f"{first_line[subject]}; each case belongs to one partition"
            )
        out[subject] = pid
        first_line[subject] = line_no
    if not out:
        raise PartitionError(f"{path} lists no cases; expected rows like '1,FeTS2022_00001'")
    return out


def read_patients(csv_path: str | Path) -> dict[str, str]:
    """Subject id -> patient id from the optional ``Patient_ID`` column (every subject of the
    file; a subject with an empty cell is its own patient). Without the column: ``{}`` (every case
    its own patient). Refuses a patient id that is not a plain name and a patient whose cases lie
    in two partitions (its privacy would be spent at two sites; FeTS partitions are hospitals)."""
    path = Path(csv_path)
    partition_of = read_partitioning(path)
    rows = csv.reader(path.read_text(encoding="utf-8-sig").splitlines())
    header = [h.strip().lstrip("\ufeff") for h in next(rows)]
    if PATIENT_COLUMN not in header:
        return {}
    col, sid_col = header.index(PATIENT_COLUMN), header.index(PARTITION_COLUMNS[1])
    out: dict[str, str] = {}
    site_of: dict[str, tuple[int, str]] = {}
    for line_no, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        subject, patient = row[sid_col].strip(), row[col].strip() or row[sid_col].strip()
        if not _SUBJECT.match(patient):
            raise PartitionError(
                f"{path}, line {line_no}: Patient_ID {patient!r} is not a plain name "
                "(letters, digits, '.', '_', '-')"
            )
        pid = partition_of[subject]
        first = site_of.setdefault(patient, (pid, subject))
        if first[0] != pid:
            raise PartitionError(
                f"{path}, line {line_no}: patient {patient} has cases in partitions {first[0]} "
                f"({first[1]}) and {pid} ({subject}); a patient must belong to one site"
            )
        out[subject] = patient
    return out


def valid_subject_id(value: object) -> bool:
    """A case id as a folder name: letters, digits, '.', '_', '-' (no path, no markup)."""
    return isinstance(value, str) and len(value) <= 128 and bool(_SUBJECT.match(value))
