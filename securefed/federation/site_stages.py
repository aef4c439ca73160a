"""The study's stages before and after training, at the site, as the coordinator's Flower messages
(deployment: ``securefed federation run``). A stage request is a ``query`` (legacy
get_properties) or, for the test scores, an ``evaluate`` message whose config names the
``stage``; what the request may carry is :data:`securefed.federation.site_rules.STAGE_KEYS`.

- ``features``: the site extracts its radiomics from its own data folder into its work folder
  (they stay there), then releases them through its accepted protocol exactly as the file path
  does (:func:`securefed.site.release.release_site_features`: protected, charged to its ledger,
  sealed to the server key the protocol pins and SITE.toml allows). **Leaves the site**: that
  sealed envelope, nothing else. Asked again (a coordinator that restarted), the site resends
  the same bytes from its outbox and never releases twice. Refused under a secure-aggregate
  protocol and for an institution the protocol holds out (nothing per case is released there).
- ``assign``: the request carries the server's sealed cluster model for this site; the site opens
  it under the pinned server key (protocol, stage and replay checked) and assigns each of its own
  cases (:func:`securefed.site.assign.assign_own_cases`), keeping ``clusters.csv`` in its state
  folder, where its training and test stages read it. **Leaves the site**: an acknowledgement.
- ``test`` (an evaluate message): the site scores its own test cases of the request's cluster
  (``-1``: all of them) with the model sent; the reply is the validation reply's shape (count and
  mean Dice per region under a plain protocol; a zero count and no metric otherwise), checked by
  the same egress guard.

Tests: ``tests/federation/test_site_stages.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed.clustering.assignments import Assignment, write_assignments
from securefed.crypto import PrivateKeys, PublicKeys
from securefed.errors import ConfigError, InstructionRefusedError, KeyError_, SiteTrustError
from securefed.federation.config import SiteSettings
from securefed.trust import AcceptedProtocol

__all__ = [
    "ASSIGNMENTS_FILE",
    "StageSite",
    "features_table",
    "keep_assignments",
    "own_assignments",
    "patients_of",
    "run_site_stage",
    "site_patients",
]

ASSIGNMENTS_FILE = "clusters.csv"  # in the site's state folder: its own cases' clusters
_OUTBOX = "outbox"
_FEATURES = "features"


@dataclass(frozen=True)
class StageSite:
    """What a stage needs of the site: its settings, the protocol it accepted, its state folder
    (ledger, logs, outbox, clusters.csv) and its identity key (SITE.toml ``site.key``)."""

    site: SiteSettings
    accepted: AcceptedProtocol
    state_dir: Path
    key: PrivateKeys | None

    @property
    def work_dir(self) -> Path:
        return Path(self.site.work_dir) if self.site.work_dir else self.state_dir

    def identity(self) -> PrivateKeys:
        if self.key is None or self.key.role != "site":
            raise SiteTrustError(
                f"site {self.site.partition_id}: a stage over the deployment needs the site's "
                "own key (SITE.toml [site] key, `securefed site init --key`)"
            )
        return self.key


def own_assignments(state_dir: str | Path) -> Path:
    """Where the site keeps the clusters of its own cases (written by the ``assign`` stage)."""
    return Path(state_dir) / ASSIGNMENTS_FILE


def run_site_stage(stage_site: StageSite, stage: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Answer a checked features or assign request (the properties of the reply; the secure
    clustering's stages are securefed.federation.site_secure's)."""
    if stage == "features":
        return {"envelope": _release(stage_site, config)}
    if stage == "assign":
        _assign(stage_site, config)
        return {"assigned": True}
    raise InstructionRefusedError(f"stage {stage!r} is not answered by a query; refusing")


def _server_keys(stage_site: StageSite, config: Mapping[str, Any]) -> PublicKeys:
    """The server's public keys from the request, used only when they are the ones the site's
    protocol pins and its SITE.toml allows as a recipient."""
    from securefed.site.release import check_server_key
    from securefed.trust import check_recipient, load_site_config

    try:
        server = PublicKeys.from_json(json.loads(bytes(config["server-keys"])), "server-keys")
    except (ValueError, TypeError, KeyError_) as exc:
        raise InstructionRefusedError(
            "the coordinator's message: server-keys is not a public key bundle; refusing"
        ) from exc
    check_server_key(stage_site.accepted.loaded, server)
    if not stage_site.site.site_config:
        raise SiteTrustError("a stage over the deployment needs the site's SITE.toml")
    check_recipient(load_site_config(Path(stage_site.site.site_config)),
                    server.encryption_fingerprint)  # fmt: skip
    return server


def site_patients(site: SiteSettings, partitioning: str) -> dict[str, str]:
    """Subject id -> patient id from the site's partition file: node config ``partitions``, else
    ``<data dir>/<partitioning>.csv`` (every case its own patient when there is none or it has no
    Patient_ID column). The one rule for every stage and for training (DP-SGD's patients)."""
    from securefed.data import read_patients

    path = Path(site.partitions) if site.partitions else Path(site.data_dir) / f"{partitioning}.csv"
    return read_patients(path) if path.is_file() else {}


def patients_of(stage_site: StageSite) -> dict[str, str]:
    """Subject id -> patient id of the site's cases (empty: every case its own patient)."""
    return site_patients(stage_site.site, stage_site.accepted.loaded.protocol.data.partitioning)


def _refuse_release(stage_site: StageSite) -> None:
    proto = stage_site.accepted.loaded.protocol
    if proto.release.mode == "secure-aggregate":
        raise InstructionRefusedError(
            "the coordinator asked for per-case features under a secure-aggregate protocol; "
            "refusing (nothing per case is released)"
        )
    if stage_site.site.partition_id in set(proto.data.held_out_partitions):
        raise InstructionRefusedError(
            "the coordinator asked a held-out institution for its features; refusing"
        )


def _release(stage_site: StageSite, config: Mapping[str, Any]) -> bytes:
    """The sealed feature release (the same envelope the file path writes), made once."""
    from securefed.site.extract import extract_site_features
    from securefed.site.release import release_site_features

    _refuse_release(stage_site)
    server = _server_keys(stage_site, config)  # checked before any data is read
    keys = stage_site.identity()
    outbox = stage_site.state_dir / _OUTBOX
    sent = outbox / f"{keys.party_id}.features.env"
    if sent.is_file():  # released before (the coordinator restarted): the same bytes again
        return sent.read_bytes()
    loaded = stage_site.accepted.loaded
    site = stage_site.site
    featdir = stage_site.work_dir / _FEATURES
    extract_site_features(loaded, Path(site.data_dir), featdir, partitions=[site.partition_id])
    release = release_site_features(
        featdir, stage_site.accepted, keys, server, outbox, stage_site.state_dir,
        patients=site_patients(site, loaded.protocol.data.partitioning),
    )  # fmt: skip
    return Path(release.envelope).read_bytes()


def features_table(stage_site: StageSite) -> Any:
    """The site's own feature table (extracted here for a held-out institution and under a
    secure-aggregate protocol, which released nothing in a features stage)."""
    from securefed.radiomics.storage import load_table
    from securefed.site.extract import extract_site_features

    featdir = stage_site.work_dir / _FEATURES
    if not (featdir / "features.csv").is_file():
        site = stage_site.site
        proto = stage_site.accepted.loaded.protocol
        if (
            site.partition_id not in set(proto.data.held_out_partitions)
            and proto.release.mode != "secure-aggregate"
        ):
            raise ConfigError(
                f"{featdir}: no features of this site; the features stage runs before assign"
            )
        extract_site_features(stage_site.accepted.loaded, Path(site.data_dir), featdir,
                              partitions=[site.partition_id])  # fmt: skip
    return load_table(featdir)[0]


def _assign(stage_site: StageSite, config: Mapping[str, Any]) -> None:
    """Open the sealed cluster model and assign the site's own cases (kept at the site)."""
    from securefed.protocol.egress import training_egress
    from securefed.site.assign import assign_own_cases

    loaded = stage_site.accepted.loaded
    proto = loaded.protocol
    if proto.release.mode == "secure-aggregate":
        raise InstructionRefusedError(
            "the coordinator sent a fitted cluster model under a secure-aggregate protocol "
            "(its clusters come from the federated DP clustering); refusing"
        )
    server = _server_keys(stage_site, config)  # checked before any data is read
    keys = stage_site.identity()
    table = features_table(stage_site)
    held_out = stage_site.site.partition_id in set(proto.data.held_out_partitions)
    # A training site of a local-dp protocol assigns on its noised release (egress "released");
    # a held-out institution routes its cases on its own vectors.
    on_release = (
        proto.release.mode == "local-dp"
        and training_egress(proto).membership == "released"
        and not held_out
    )
    assigned = assign_own_cases(
        bytes(config["envelope"]), table, site_keys=keys, accepted=stage_site.accepted,
        state_dir=stage_site.state_dir, server_public=(server,), on_release=on_release,
        patients=site_patients(stage_site.site, proto.data.partitioning),
    )  # fmt: skip
    keep_assignments(stage_site, table, assigned.labels)
    from securefed.trust.audit_log import AuditLog

    audit = AuditLog(stage_site.state_dir, keys.party_id, loaded.sha256)
    audit.record("envelope-opened", stage="cluster-model", sender=server.party_id)
    audit.sign_head(keys)


def keep_assignments(stage_site: StageSite, table: Any, labels: Any) -> None:
    """The site's clusters.csv in its state folder: the cluster of each of its own cases."""
    rows = [
        Assignment(sid, int(pid), split, int(label))
        for sid, pid, split, label in zip(
            table.subject_ids, table.partition_ids, table.splits, labels, strict=True
        )
    ]
    write_assignments(own_assignments(stage_site.state_dir), rows)
