"""The site's own copy of what it released at the feature stage (``STATE/released/features.npz``).

Under a protocol that claims a finite epsilon a site assigns its cases to clusters on the vectors
it released (securefed.protocol.egress, membership ``released``): with ``local-dp`` the noised
ones, so the clusters a site trains in are post-processing of its DP release and tell the server
nothing it could not compute itself. The copy holds released values only (no raw value) and never
leaves the site. It is written before the sealed release is kept for sending, so a resent
release always has its copy.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from securefed.errors import DataError
from securefed.fileio import atomic_write_bytes
from securefed.privacy.protection import ReleasedFeatures

__all__ = ["keep_released", "released_rows"]

_FILE = Path("released") / "features.npz"


def keep_released(state_dir: Path, released: ReleasedFeatures, protocol_hash: str) -> Path:
    """Store the released rows (subject ids, columns, values) of this site, atomically."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        subject_ids=np.array(released.subject_ids, dtype=str),
        columns=np.array(released.columns, dtype=str),
        values=np.ascontiguousarray(released.matrix, dtype="<f8"),
        protocol=np.array(protocol_hash, dtype=str),
    )
    path = Path(state_dir) / _FILE
    atomic_write_bytes(path, buffer.getvalue())
    return path


def released_rows(
    state_dir: Path,
    protocol_hash: str,
    subject_ids: tuple[str, ...] | list[str],
    patients: Mapping[str, str] | None = None,
) -> np.ndarray:
    """The released vectors of ``subject_ids`` (in that order), from the site's copy. A case
    that was not released itself takes the row of its patient's released case (``patients``:
    subject id -> patient id; a local-dp release holds one case per patient)."""
    path = Path(state_dir) / _FILE
    if not path.is_file():
        raise DataError(
            f"{path}: no copy of this site's feature release; release the features "
            "(`securefed features release`) before assigning cases to clusters"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = [str(s) for s in data["subject_ids"]]
            values = np.array(data["values"], dtype=np.float64)
            protocol = str(data["protocol"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: unreadable release copy ({exc}); release again") from exc
    if protocol != protocol_hash:
        raise DataError(
            f"{path}: the release copy is of protocol {protocol}, not {protocol_hash}; "
            "release the features under this protocol first"
        )
    index = {sid: i for i, sid in enumerate(ids)}
    by_patient = {(patients or {}).get(sid, sid): i for sid, i in index.items()}
    for sid in subject_ids:
        patient = (patients or {}).get(sid, sid)
        if sid not in index and patient in by_patient:
            index[sid] = by_patient[patient]
    missing = [sid for sid in subject_ids if sid not in index]
    if missing:
        raise DataError(
            f"{path}: case(s) {', '.join(missing[:5])} were not released; release the "
            "features again with every case to be assigned"
        )
    return values[[index[sid] for sid in subject_ids]]
