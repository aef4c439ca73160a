"""Site role, feature stage: protect a site's radiomics table and seal it to the server.

What leaves the site is exactly one sealed envelope (stage ``features``) whose encrypted payload
holds the ``ReleasedFeatures`` of this site's own cases: subject ids, splits, partition id, the
released column names, one float64 row per case, and the release metadata (mode, mechanism,
epsilon, delta, noise scale, sensitivity, projection). No image, path, hash of an image or
intensity statistic is included. In ``plain`` mode the rows are the raw values (epsilon = inf, the
paper's behaviour, sealed in transit only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefed.crypto import PrivateKeys, PublicKeys
from securefed.errors import (
    DataError,
    EgressRefusedError,
    InternalError,
    KeyError_,
    ProtocolError,
    SecurefedError,
)
from securefed.privacy.bounding import bounded_mask
from securefed.privacy.ledger import Ledger
from securefed.privacy.protection import (
    FEATURES_STAGE,
    ReleasedFeatures,
    new_release_id,
    protect_features,
)
from securefed.protocol import LoadedProtocol
from securefed.radiomics.storage import load_table
from securefed.radiomics.table import FeatureTable
from securefed.site.egress_guard import check_feature_release
from securefed.site.pending import PendingReleases
from securefed.site.released import keep_released
from securefed.transport import SendCounter, seal_message, write_message
from securefed.trust import AcceptedProtocol
from securefed.trust.audit_log import AuditLog
from securefed.trust.egress_log import EgressLog, describe_value

__all__ = ["SiteRelease", "check_server_key", "release_site_features", "site_spec_for"]


@dataclass(frozen=True)
class SiteRelease:
    """Where the envelope went and what it carries (for logs: no values)."""

    envelope: Path
    site_id: str
    partition_id: int
    cases: int
    columns: int
    epsilon: float
    delta: float


def check_server_key(loaded: LoadedProtocol, server: PublicKeys) -> None:
    """The server's public bundle must be a server key and match the protocol's pins."""
    spec = loaded.protocol.server
    if server.role != "server":
        raise KeyError_(f"{server.party_id}: a {server.role} key was given as the server's key")
    if server.party_id != spec.id:
        raise KeyError_(
            f"server key is for {server.party_id!r}, the protocol's server is {spec.id!r}"
        )
    if spec.encryption_key is not None and server.encryption_fingerprint != spec.encryption_key:
        raise KeyError_(
            f"server key {server.encryption_fingerprint} does not match the protocol's "
            f"server.encryption_key {spec.encryption_key}; refusing to seal to it"
        )
    if spec.signing_key is not None and server.signing_fingerprint != spec.signing_key:
        raise KeyError_("server signing key does not match the protocol's server.signing_key")


def site_spec_for(loaded: LoadedProtocol, site_id: str, partitions: list[int]) -> int:
    """The partition id of ``site_id`` under the protocol (listed, or simulated site-<id>)."""
    for site in loaded.protocol.resolve_sites(partitions):
        if site.id == site_id:
            return site.partition_id
    raise ProtocolError(
        f"site {site_id!r} is not a site of this protocol (sites: "
        f"{', '.join(s.id for s in loaded.protocol.resolve_sites(partitions))})"
    )


def _own_rows(table: FeatureTable, partition_id: int, site_id: str) -> FeatureTable:
    own = table.partition(partition_id)
    if not len(own):
        raise DataError(
            f"the feature folder has no case of partition {partition_id} (site {site_id}); "
            "extract this site's cases first"
        )
    return own


def release_site_features(
    featdir: Path,
    accepted: AcceptedProtocol,
    site_keys: PrivateKeys,
    server_keys: PublicKeys,
    outbox: Path,
    state_dir: Path,
    *,
    unsafe_seed: int | None = None,
    patients: Mapping[str, str] | None = None,
) -> SiteRelease:
    """Protect this site's features as the protocol says, charge the ledger, seal, write the
    envelope atomically into ``outbox``. Leaves the site: the envelope (see module docstring).

    ``patients``: subject id -> patient id (the partition file's ``Patient_ID``; None: every case
    its own patient). A ``local-dp`` release sends one row per patient (its first case id), so a
    patient with several cases is protected at the calibrated epsilon and the row count does not
    depend on how many cases a patient has.

    Crash-safe: the sealed release is kept at the site (:mod:`securefed.site.pending`) before it
    is written for sending; a rerun after an interruption resends the same bytes and records the
    commit, never drawing fresh noise under the one charge.

    ``accepted``: the protocol as this site accepted it (securefed.trust.verify_for_site, or
    accept_unsigned_simulation): a release cannot be asked for under an unverified protocol."""
    if not isinstance(accepted, AcceptedProtocol):
        raise InternalError("release_site_features: the protocol was not accepted by the site")
    loaded = accepted.loaded
    if site_keys.role != "site":
        raise KeyError_(f"{site_keys.party_id}: a {site_keys.role} key cannot release features")
    check_server_key(loaded, server_keys)
    table, manifest = load_table(featdir)
    settings = loaded.protocol.radiomics.model_dump(mode="json")
    if manifest.get("settings") != settings:
        raise ProtocolError(
            f"{featdir}: features were extracted with other radiomics settings than this "
            "protocol's [radiomics]; rerun `securefed features extract` with this protocol"
        )
    site_id = site_keys.party_id
    partition = site_spec_for(loaded, site_id, sorted(set(table.partition_ids)))
    own = _own_rows(table, partition, site_id)
    if loaded.protocol.release.mode == "local-dp":
        own = own.select(bounded_mask(own.subject_ids, patients, 1))
    ledger = Ledger.for_protocol(state_dir, loaded, site_id)
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / f"{site_id}.{FEATURES_STAGE}.env"
    pending = PendingReleases(state_dir)
    audit = AuditLog(state_dir, site_id, loaded.sha256)
    waiting = pending.waiting(FEATURES_STAGE, loaded.sha256, ledger)
    egress = EgressLog(state_dir, site_id, loaded.sha256)
    if waiting is not None:  # an interrupted run sealed this release: send the same bytes
        write_message(path, waiting.envelope)
        egress.record("envelope", FEATURES_STAGE, server_keys.party_id,
                      [describe_value("envelope", bytes(waiting.envelope))])  # fmt: skip
        ledger.commit_intent(waiting.release_id)
        pending.clear(FEATURES_STAGE)
        audit.record("envelope-sealed", stage=FEATURES_STAGE, recipient=server_keys.party_id,
                     release_id=waiting.release_id, resent=True)  # fmt: skip
        audit.sign_head(site_keys)
        return SiteRelease(envelope=path, site_id=site_id, partition_id=partition,
                           **waiting.summary)  # fmt: skip
    counters = SendCounter(state_dir / "counters")
    release_id = new_release_id(FEATURES_STAGE)
    pending.begin(FEATURES_STAGE, loaded.sha256, release_id)

    def seal_and_write(released: ReleasedFeatures) -> None:
        audit.record("features-released", release_id=release_id, mode=released.metadata["mode"],
                     rows=len(released.subject_ids),
                     epsilon=float(released.metadata["epsilon"]))  # fmt: skip
        meta = {
            "kind": "features",
            "site": site_id,
            "partition_id": partition,
            "subject_ids": list(released.subject_ids),
            "splits": list(released.splits or ()),
            "columns": list(released.columns),
            "release": {k: _plain(v) for k, v in released.metadata.items()},
            # The site's ledger up to this release's intent, so the server can hold the site
            # to it (securefed.server.ledger_heads): stages, random ids and DP events only.
            "ledger": ledger.read().entries,
            # The site's signed audit head so far: the server records it (a later edit of the
            # site's log before this point shows).
            "audit_head": audit.sign_head(site_keys),
        }
        values = np.ascontiguousarray(released.matrix, dtype="<f8")
        try:
            check_feature_release(meta, values, loaded, site_id=site_id, partition_id=partition)
        except EgressRefusedError as exc:
            audit.record("egress-refused", stage=FEATURES_STAGE, release_id=release_id)
            raise exc
        envelope = seal_message(
            {"values": values},
            sender=site_keys,
            recipient=server_keys,
            protocol_hash=loaded.sha256,
            stage=FEATURES_STAGE,
            counters=counters,
            meta=meta,
        )
        # The site's copy of its release (it assigns its cases on it), then the sealed release,
        # both kept before anything is written for sending: a retry resends these bytes.
        keep_released(state_dir, released, loaded.sha256)
        pending.keep(FEATURES_STAGE, release_id, envelope, _summary(released))
        write_message(path, envelope)
        egress.record("envelope", FEATURES_STAGE, server_keys.party_id,
                      _envelope_fields(meta, values, envelope))  # fmt: skip

    try:
        released = protect_features(
            own, loaded, ledger, site_id, release_id=release_id, write=seal_and_write,
            unsafe_seed=unsafe_seed,
        )  # fmt: skip
    except SecurefedError:
        # A refusal (budget, egress guard) is in the log: close it with a signed head, so the
        # site's log still verifies (`securefed audit verify`) after an honest refusal.
        audit.sign_head(site_keys)
        raise
    pending.clear(FEATURES_STAGE)
    audit.record("envelope-sealed", stage=FEATURES_STAGE, recipient=server_keys.party_id,
                 release_id=release_id, resent=False)  # fmt: skip
    audit.sign_head(site_keys)
    return SiteRelease(envelope=path, site_id=site_id, partition_id=partition,
                       **_summary(released))  # fmt: skip


def _envelope_fields(
    meta: dict[str, Any], values: np.ndarray, envelope: bytes
) -> list[dict[str, Any]]:
    """What the envelope carries, field by field, for the site's egress log."""
    fields = [describe_value(k, v) for k, v in sorted(meta.items()) if k != "release"]
    fields += [describe_value(f"release.{k}", v) for k, v in sorted(meta["release"].items())]
    fields.append(describe_value("values", values))
    fields.append({"name": "envelope.bytes", "type": "int", "value": len(envelope)})
    return fields


def _summary(released: ReleasedFeatures) -> dict[str, Any]:
    return {
        "cases": len(released.subject_ids),
        "columns": len(released.columns),
        "epsilon": float(released.metadata["epsilon"]),
        "delta": float(released.metadata["delta"]),
    }


def _plain(value: object) -> object:
    """Metadata as codec-safe JSON (infinite epsilon as the string "inf")."""
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value
