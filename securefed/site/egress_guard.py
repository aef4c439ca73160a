"""The site's guard on its sealed feature release: before the envelope is sealed, check that what
is about to leave is exactly what the site's verified protocol declares, and refuse (logged as
``egress-refused`` in the site's audit log, nothing written for sending) anything else.

Checked: the metadata fields (exactly the declared set: kind, site, partition, subject ids,
splits, columns, release, ledger, audit head), the site and partition, the released columns
(the protocol's, or its subset or projection), the value matrix (float64, one row per subject id,
finite), the subject ids (valid case ids, unique), the release mode, mechanism, epsilon and delta
(the protocol's plan) and, for local-dp, that every value lies on the 2^-12 release grid.
The Flower side has its own guard (securefed.federation.guard). Tests:
``tests/site/test_egress_guard.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from securefed.data.partitions import valid_subject_id
from securefed.errors import EgressRefusedError
from securefed.privacy.protection import GRID, local_dp_plan, released_columns
from securefed.protocol import LoadedProtocol

__all__ = ["FEATURE_META_FIELDS", "check_feature_release"]

FEATURE_META_FIELDS = frozenset(
    {"kind", "site", "partition_id", "subject_ids", "splits", "columns", "release", "ledger",
     "audit_head"}
)  # fmt: skip


def _num(value: Any) -> float:
    if value == "inf":
        return math.inf
    return float(value)


def check_feature_release(
    meta: Mapping[str, Any],
    values: np.ndarray,
    loaded: LoadedProtocol,
    *,
    site_id: str,
    partition_id: int,
) -> None:
    """Raise EgressRefusedError naming the first field that differs from the declaration."""

    def refuse(what: str) -> EgressRefusedError:
        return EgressRefusedError(f"{site_id}: feature release refused before sealing: {what}")

    extra = set(meta) - FEATURE_META_FIELDS
    missing = FEATURE_META_FIELDS - set(meta)
    if extra or missing:
        raise refuse(f"undeclared metadata {sorted(extra)} / missing {sorted(missing)}")
    if meta["kind"] != "features" or meta["site"] != site_id:
        raise refuse(f"kind/site {meta['kind']!r}/{meta['site']!r}")
    if meta["partition_id"] != partition_id:
        raise refuse(f"partition_id {meta['partition_id']!r} is not this site's ({partition_id})")
    _check_rows(meta, values, list(released_columns(loaded)), refuse)
    _check_mechanism(meta["release"], values, loaded, refuse)


def _check_rows(meta: Mapping[str, Any], values: np.ndarray, columns: list[str],
                refuse: Callable[[str], EgressRefusedError]) -> None:  # fmt: skip
    if list(meta["columns"]) != columns:
        raise refuse(f"columns differ from the protocol's {len(columns)} released columns")
    ids = list(meta["subject_ids"])
    if not all(valid_subject_id(s) for s in ids) or len(set(ids)) != len(ids):
        raise refuse("subject_ids: invalid or repeated case ids")
    splits = list(meta["splits"])
    if splits and (len(splits) != len(ids) or not set(splits) <= {"train", "val", "test"}):
        raise refuse("splits: not one of train/val/test per subject id")
    if values.dtype != np.float64 or values.shape != (len(ids), len(columns)):
        raise refuse(f"values {values.dtype} {values.shape}, expected float64 "
                     f"({len(ids)}, {len(columns)})")  # fmt: skip
    if not np.isfinite(values).all():
        raise refuse("values: NaN or infinite entries")


def _check_mechanism(release: Mapping[str, Any], values: np.ndarray, loaded: LoadedProtocol,
                     refuse: Callable[[str], EgressRefusedError]) -> None:  # fmt: skip
    spec = loaded.protocol.release
    if release.get("mode") != spec.mode or release.get("protocol") != loaded.sha256:
        raise refuse(f"release mode/protocol {release.get('mode')!r} differs from the protocol's")
    if spec.mode == "plain":
        if release.get("mechanism") is not None or _num(release.get("epsilon")) != math.inf:
            raise refuse("a plain release declares no mechanism and epsilon inf")
        return
    plan = local_dp_plan(loaded)
    if release.get("mechanism") != spec.mechanism:
        raise refuse(f"mechanism {release.get('mechanism')!r}, the protocol's is {spec.mechanism}")
    if _num(release.get("epsilon")) != plan.epsilon or _num(release.get("delta")) != plan.delta:
        raise refuse(f"epsilon/delta {release.get('epsilon')}/{release.get('delta')} differ from "
                     f"the protocol's plan {plan.epsilon}/{plan.delta}")  # fmt: skip
    geo = plan.geometry
    if geo.selected is None:  # projected coordinates: the release space itself
        unit = values
    else:  # raw feature units: lower + unit * width (post-processing of the grid values)
        b = geo.output_bounds()
        unit = (values - b.lower) / b.width
    steps = unit / GRID
    if not np.allclose(steps, np.rint(steps), rtol=0.0, atol=1e-6):
        raise refuse("values are not on the 2^-12 release grid (noise not from the sampler)")
