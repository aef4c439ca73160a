"""The secure-aggregate clustering at the site, as the coordinator's Flower messages (deployment:
``securefed federation run`` under ``release.mode = "secure-aggregate"``). The protocol is
securefed.clustering.secure's; here each step is a stage request (``query`` message):

- ``secure-keys``: the site makes (once per protocol, kept in its state folder, mode 0600) its
  X25519 masking key and answers with the public key signed by the key the protocol pins for it
  (securefed.crypto.secagg_keys.sign_masking_key). **Leaves the site**: the public key and the
  signature: nothing derived from data.
- ``secure-round``: the request carries the round, its kind, the key directory of the round's
  participants and (a stats round) the public centroids. The site answers only when every
  participant's key is signed by a distinct site the protocol pins (its own entry being its own
  key), the participants are at least the protocol's minimum and more than its colluding bound,
  the round and kind are the protocol's plan's, and it has not answered that round or a later
  one (kept in its state folder: a coordinator cannot replay a round to another participant set).
  It charges its ledger before drawing its noise share. **Leaves the site**: one masked vector,
  uniform without the other participants' pair seeds; only the noised sum opens.
- ``secure-assign``: the request carries the final public centroids; the site assigns each of its
  cases on its own projected vectors and keeps clusters.csv in its state folder. **Leaves the
  site**: a bare acknowledgement.

Centroids are the coordinator's, unchecked beyond their shape and range: every round's noise is
calibrated to the plan's sensitivity whatever they are, so they cannot raise what a round
releases (the plan's epsilon holds under adaptive composition;
``tests/federation/test_site_secure.py::test_crafted_centroids_change_neither_the_charge_nor_the_noise_plan``).

Tests: ``tests/federation/test_site_secure.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import InstructionRefusedError, InternalError
from securefed.federation.site_stages import StageSite, features_table, keep_assignments

__all__ = [
    "MASKING_KEY_FILE",
    "decode_directory",
    "decode_signed",
    "encode_directory",
    "encode_signed",
    "masking_party",
    "run_secure_stage",
]

MASKING_KEY_FILE = "secure-clustering.key"
_CONTEXT = b"|clustering"


def _refuse(what: str) -> InstructionRefusedError:
    return InstructionRefusedError(f"the coordinator's message: {what}; refusing")


def encode_directory(entries: Mapping[str, tuple[bytes, list[bytes]]]) -> bytes:
    """The key directory as a request carries it: site id -> (masking key, signed entry)."""
    doc = {
        sid: {"key": base64.b64encode(key).decode(),
              "signed": [base64.b64encode(v).decode() for v in signed]}
        for sid, (key, signed) in sorted(entries.items())
    }  # fmt: skip
    return json.dumps(doc, sort_keys=True).encode()


def encode_signed(signed: list[bytes]) -> bytes:
    """A signed-key entry (site id, signing key, signature) as one bytes value (JSON)."""
    return json.dumps([base64.b64encode(v).decode() for v in signed]).encode()


def decode_signed(raw: bytes) -> list[bytes]:
    """The inverse of :func:`encode_signed`."""
    try:
        return [base64.b64decode(v, validate=True) for v in json.loads(raw)]
    except (ValueError, TypeError) as exc:
        raise _refuse("a signed key entry that cannot be read") from exc


def decode_directory(raw: bytes) -> dict[str, tuple[bytes, Any]]:
    from securefed.crypto.secagg_keys import SignedKeys

    try:
        doc = json.loads(raw)
        return {
            str(sid): (base64.b64decode(entry["key"], validate=True),
                       SignedKeys.from_list([base64.b64decode(v, validate=True)
                                             for v in entry["signed"]]))
            for sid, entry in doc.items()
        }  # fmt: skip
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _refuse("a key directory that cannot be read") from exc


def _decode_centroids(raw: Any, k: int, d: int) -> np.ndarray:
    try:
        centroids = np.asarray(json.loads(raw), dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise _refuse("centroids that cannot be read") from exc
    if centroids.shape != (k, d) or not np.isfinite(centroids).all():
        raise _refuse(f"centroids of shape {centroids.shape}, the plan's are ({k}, {d})")
    return np.clip(centroids, 0.0, 1.0)


class _SecureSite:
    """The site's side of one protocol's secure clustering (its points, plan and key)."""

    def __init__(self, where: StageSite) -> None:
        from securefed.clustering.fixed_projection import projection_for
        from securefed.clustering.secure import plan_secure_clustering

        self.where = where
        self.loaded = where.accepted.loaded
        proto = self.loaded.protocol
        if proto.release.mode != "secure-aggregate":
            raise _refuse("a secure-clustering request under a protocol without it")
        self.key = where.identity()
        self.table = features_table(where)
        projection = projection_for(self.loaded, self.table.columns)
        cols = [self.table.columns.index(c) for c in projection.columns]
        self.points = projection(np.asarray(self.table.values)[:, cols])
        self.plan = plan_secure_clustering(proto, self.points.shape[1])

    def party(self) -> Any:
        return masking_party(self.where)

    def fit_points(self) -> np.ndarray:
        from securefed.federation.site_stages import patients_of
        from securefed.privacy.bounding import bounded_mask

        bound = self.loaded.protocol.privacy.max_cases_per_patient
        patients = patients_of(self.where) or None
        fit = self.table.fit_mask & bounded_mask(self.table.subject_ids, patients, bound)
        return np.asarray(self.points[fit])


def masking_party(where: StageSite) -> Any:
    """The site's masking key for its protocol (made once, kept 0600 in its state folder): the
    secure clustering's and the DP test summary's (each masks under its own context)."""
    from securefed.crypto.masking import MaskingParty
    from securefed.fileio import write_exclusive

    key = where.identity()
    tag = where.accepted.loaded.sha256.split(":")[-1][:16]
    path = where.state_dir / f"{tag}.{MASKING_KEY_FILE}"
    if not path.is_file():
        fresh = MaskingParty.generate(key.party_id)
        with contextlib.suppress(FileExistsError):  # another request made it first
            write_exclusive(path, fresh.private_bytes(), mode=0o600)
    return MaskingParty.from_private_bytes(key.party_id, path.read_bytes())


def run_secure_stage(
    where: StageSite, stage: str, config: Mapping[str, Any], advance: Any
) -> dict[str, Any]:
    """Answer a checked secure-clustering or DP test summary request (``secure-keys`` serves
    both). ``advance(phase, round)`` records the round the site answers (refusing a repeated or
    earlier one) before anything is charged."""
    proto = where.accepted.loaded.protocol
    held = where.site.partition_id in set(proto.data.held_out_partitions)
    if stage == "secure-keys":
        if held:
            raise _refuse("a held-out institution takes no part in a secure aggregate")
        if proto.release.mode != "secure-aggregate" and proto.evaluation.dp_summary.epsilon is None:
            raise _refuse("masking keys under a protocol without a secure aggregate")
        return _keys(where)
    if stage == "dp-test":
        from securefed.federation.site_test_summary import run_dp_test

        if advance is None:
            raise InternalError("a DP test summary needs the site's round counter")
        directory = decode_directory(config["directory"])
        masked = run_dp_test(where, directory, masking_party(where), where.identity(), advance)
        return {"masked": masked}
    site = _SecureSite(where)
    if stage == "secure-round":
        if advance is None:
            raise InternalError("a secure round needs the site's round counter")
        if held:
            raise _refuse("a held-out institution takes no part in the secure clustering")
        return {"masked": _round(site, config, advance)}
    if stage == "secure-assign":
        centroids = _decode_centroids(config["centroids"], site.plan.k, site.plan.dimension)
        from securefed.clustering.secure import nearest

        keep_assignments(where, site.table, nearest(site.points, centroids))
        _audit(site, "secure-assign")
        return {"assigned": True}
    raise _refuse(f"stage {stage!r} is not a secure-clustering stage")


def _keys(where: StageSite) -> dict[str, Any]:
    from securefed.crypto.secagg_keys import sign_masking_key

    public = masking_party(where).public_key
    signed = sign_masking_key(where.identity(), where.accepted.loaded.sha256, public)
    return {"masking-key": public, "signed": encode_signed(signed.to_list())}


def _round(site: _SecureSite, config: Mapping[str, Any], advance: Any) -> bytes:
    from securefed.clustering.secure import RoundRequest, SecureClusteringSite
    from securefed.crypto.secagg_keys import KeySignatureError, verify_masking_keys
    from securefed.privacy.ledger import Ledger
    from securefed.privacy.noise import noise_source_for
    from securefed.trust.site_key import pinned_site_keys

    plan, loaded = site.plan, site.loaded
    rnd, kind = config.get("round"), str(config.get("kind", ""))
    if isinstance(rnd, bool) or not isinstance(rnd, int):
        raise _refuse(f"round {rnd!r} is not an integer")
    directory = decode_directory(config["directory"])
    party = site.party()
    own = directory.get(site.key.party_id)
    if own is None or own[0] != party.public_key:
        raise _refuse("a key directory without this site's own masking key")
    try:
        verify_masking_keys(directory, pinned_site_keys(loaded.protocol), loaded.sha256)
    except KeySignatureError as exc:
        raise _refuse(f"a key directory the protocol's sites did not sign ({exc})") from exc
    centroids = None
    if kind == "stats":
        centroids = _decode_centroids(config.get("centroids"), plan.k, plan.dimension)
    if not 0 <= rnd < len(plan.rounds) or plan.rounds[rnd] != kind:
        raise _refuse(f"round {rnd} ({kind}) is not in the protocol's plan")
    if len(directory) < plan.min_sites or len(directory) <= plan.colluding:
        raise _refuse(f"{len(directory)} participant(s), under the protocol's minimum "
                      f"({plan.min_sites}, more than {plan.colluding} colluding)")  # fmt: skip
    # checked before the counter moves: a malformed request does not burn the round
    advance("secure-clustering", rnd + 1)  # rounds only move forward, each answered once
    sid = site.key.party_id
    worker = SecureClusteringSite(
        sid, site.fit_points(), plan, Ledger.for_protocol(site.where.state_dir, loaded, sid),
        noise_source_for(loaded.protocol, sid, "secure-clustering"),
        context=loaded.sha256.encode() + _CONTEXT, party=party,
    )  # fmt: skip
    worker.receive_keys({s: key for s, (key, _) in directory.items()})
    answer = worker.respond(RoundRequest(rnd, kind, tuple(sorted(directory)), centroids))
    _audit(site, f"secure-round-{rnd}")
    return np.ascontiguousarray(answer.masked, dtype="<u8").tobytes()


def _audit(site: _SecureSite, stage: str) -> None:
    """Close the step in the site's audit log (a round's ledger charge is its budget-spend
    entry; the assignment an envelope-opened entry for the public centroids), signed."""
    from securefed.trust.audit_log import AuditLog

    audit = AuditLog(Path(site.where.state_dir), site.key.party_id, site.loaded.sha256)
    if stage == "secure-assign":
        audit.record("envelope-opened", stage="secure-centroids", sender="server")
    audit.sign_head(site.key)
