"""The site's feature folder (FEATDIR): ``features.csv`` + ``manifest.json``, written atomically.

``features.csv`` has ``subject_id, partition_id, split`` then the feature columns, values written
with 17 significant digits (exact float64 round trip). ``manifest.json`` records the format, the
columns, the SHA-256 of features.csv (so a mismatched pair is detected) and whatever the caller
adds (protocol hash, settings, per-case content keys). FEATDIR stays at the site: the raw values
and the manifest's content keys are never sent anywhere as such.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import DataError, FeatureError
from securefed.fileio import atomic_write_bytes
from securefed.radiomics.table import FeatureTable

__all__ = [
    "FEATURES_FILE",
    "FORMAT",
    "MANIFEST_FILE",
    "atomic_write_bytes",
    "load_table",
    "read_manifest",
    "save_table",
]

FEATURES_FILE = "features.csv"
MANIFEST_FILE = "manifest.json"
FORMAT = "securefed-site-features/1"
_ID_COLUMNS = ("subject_id", "partition_id", "split")


def _csv_bytes(table: FeatureTable) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_ID_COLUMNS, *table.columns])
    for i, sid in enumerate(table.subject_ids):
        row = [format(float(v), ".17g") for v in table.values[i]]
        writer.writerow([sid, table.partition_ids[i], table.splits[i], *row])
    return buf.getvalue().encode("utf-8")


def save_table(
    table: FeatureTable, featdir: Path, manifest: Mapping[str, Any] | None = None
) -> Path:
    """Write ``table`` to FEATDIR (features.csv, then manifest.json). Returns FEATDIR.

    Site-local: nothing is sent anywhere."""
    featdir = Path(featdir)
    data = _csv_bytes(table)
    meta = dict(manifest or {})
    meta.update(
        {
            "format": FORMAT,
            "columns": list(table.columns),
            "n_cases": len(table),
            "features_sha256": "sha256:" + hashlib.sha256(data).hexdigest(),
        }
    )
    atomic_write_bytes(featdir / FEATURES_FILE, data)
    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(featdir / MANIFEST_FILE, text.encode("utf-8"))
    return featdir


def read_manifest(featdir: Path) -> dict[str, Any]:
    """The manifest of FEATDIR (raises DataError naming the file when missing or invalid)."""
    path = Path(featdir) / MANIFEST_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: missing; run `securefed features extract --out {featdir}` first"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc}); rerun feature extraction") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a securefed site feature manifest (format {FORMAT})")
    return meta


def load_table(featdir: Path) -> tuple[FeatureTable, dict[str, Any]]:
    """Read FEATDIR back: the FeatureTable and its manifest, checked against each other."""
    featdir = Path(featdir)
    meta = read_manifest(featdir)
    path = featdir / FEATURES_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc}); rerun feature extraction") from exc
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != meta.get("features_sha256"):
        raise DataError(
            f"{path}: does not match {MANIFEST_FILE} (changed or half-written); rerun extraction"
        )
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    if not rows:
        raise DataError(f"{path}: empty file")
    header = rows[0]
    columns = header[len(_ID_COLUMNS) :]
    if tuple(header[: len(_ID_COLUMNS)]) != _ID_COLUMNS or columns != meta.get("columns"):
        raise DataError(f"{path}: header does not match the manifest's columns")
    ids, parts, splits, values = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, expected {len(header)}")
        try:
            parts.append(int(row[1]))
            values.append([float(v) for v in row[3:]])
        except ValueError as exc:
            raise DataError(f"{path}, line {line}: {exc}") from exc
        ids.append(row[0])
        splits.append(row[2])
    matrix = np.array(values, dtype=np.float64).reshape(len(ids), len(columns))
    try:
        table = FeatureTable(ids, parts, splits, columns, matrix)
    except FeatureError as exc:
        raise DataError(f"{path}: {exc}") from exc
    return table, meta
