"""Contribution bounding per patient: which of a site's cases enter a DP computation.

The privacy unit is the patient; a patient may have several cases (partition-file column
``Patient_ID``, :func:`securefed.data.read_patients`). A mechanism calibrated for one case per
patient must see at most one case of each patient (or be calibrated for the bound it sees). The
choice here is deterministic and depends on that patient's own case ids only (their first ids in
ascending order), so replacing one patient changes which of ITS cases are kept and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["bounded_mask", "patient_groups"]


def patient_groups(
    subject_ids: Sequence[str], patient_of: Mapping[str, str] | None
) -> dict[str, list[int]]:
    """Patient id -> row indices of its cases (ascending subject id); a case without a patient
    id is its own patient."""
    groups: dict[str, list[int]] = {}
    patients = patient_of or {}
    order = sorted(range(len(subject_ids)), key=lambda i: subject_ids[i])
    for i in order:
        sid = subject_ids[i]
        groups.setdefault(patients.get(sid, sid), []).append(i)
    return groups


def bounded_mask(
    subject_ids: Sequence[str], patient_of: Mapping[str, str] | None, limit: int
) -> np.ndarray:
    """Row mask keeping at most ``limit`` cases per patient (its first ``limit`` subject ids)."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    keep = np.zeros(len(subject_ids), dtype=bool)
    for rows in patient_groups(subject_ids, patient_of).values():
        keep[rows[:limit]] = True
    return keep
