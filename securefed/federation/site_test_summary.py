"""The DP test summary at the site over the deployment (``evaluation.dp_summary``; the plan and
its sensitivity: securefed.privacy.test_summary).

- While the site answers the coordinator's ``test`` requests under a protocol that claims a
  finite epsilon, it sends no metric (a zero count) and keeps each test case's Dice in its state
  folder (``test-scores/``, per model: ``-1`` the global model, ``c`` cluster ``c``'s model).
  **Leaves the site**: nothing beyond the zero count.
- ``dp-test`` (a ``query`` message): the request carries the key directory of the summary's
  participants (the sites' signed masking keys, ``secure-keys``). The site answers once per
  protocol, only when every participant's key is signed by a distinct site the protocol pins
  (its own entry being its own key) and the participants number at least
  ``evaluation.dp_summary.min_sites`` and more than the colluding bound. It builds its vector
  from its kept scores (each test case under the global model and under its own cluster's
  model, from the site's own clusters.csv), charges its ledger, then draws its noise share and
  masks. **Leaves the site**: one masked vector of 7 values; only the noised total opens.

The models scored are the coordinator's, unchecked: a Dice lies in [0, 1] whatever the model, so
the charge and the noise plan (from the protocol alone) hold for any of them.

Tests: ``tests/federation/test_site_test_summary.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import ConfigError, InstructionRefusedError
from securefed.federation.site_stages import StageSite, own_assignments
from securefed.fileio import write_json_atomic

__all__ = ["SCORES_DIR", "keep_test_scores", "run_dp_test"]

SCORES_DIR = "test-scores"
_CONTEXT = b"|test-summary"
_PHASE = "test-summary"


def _refuse(what: str) -> InstructionRefusedError:
    return InstructionRefusedError(f"the coordinator's message: {what}; refusing")


def _scores_path(state_dir: Path, sha256: str, cluster: int) -> Path:
    tag = sha256.split(":")[-1][:16]
    return Path(state_dir) / SCORES_DIR / f"{tag}.model{cluster}.json"


def keep_test_scores(
    state_dir: str | Path, sha256: str, cluster: int, cases: list[dict[str, Any]]
) -> None:
    """Keep the per-case Dice (TC, WT, ET) of one model at the site (never sent)."""
    from securefed.privacy.test_summary import REGIONS

    scores = {}
    for row in cases:
        try:
            scores[str(row["subject_id"])] = [float(row[f"dice_{r}"]) for r in REGIONS]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                "the site's task returned no per-case Dice (cases with subject_id and "
                "dice_tc/wt/et); the DP test summary needs them: use the default task"
            ) from exc
    path = _scores_path(Path(state_dir), sha256, int(cluster))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, scores)


def _read_scores(state_dir: Path, sha256: str, cluster: int) -> dict[str, list[float]]:
    path = _scores_path(state_dir, sha256, cluster)
    if not path.is_file():
        return {}
    return {str(k): [float(x) for x in v] for k, v in json.loads(path.read_text()).items()}


def _local_scores(where: StageSite) -> tuple[dict[str, Any], dict[str, Any]]:
    """(global model's, own cluster model's) Dice of each of the site's test cases."""
    from securefed.clustering.assignments import read_assignments

    sha = where.accepted.loaded.sha256
    state = Path(where.state_dir)
    pid = where.site.partition_id
    path = Path(where.site.assignments) if where.site.assignments else own_assignments(state)
    if not path.is_file():
        raise _refuse("a test summary before this site assigned its cases")
    tests = {r.subject_id: r.cluster for r in read_assignments(path)
             if r.partition_id == pid and r.split == "test"}  # fmt: skip
    fedavg = _read_scores(state, sha, -1)
    cluster_scores: dict[int, dict[str, list[float]]] = {}
    cffl = {}
    for sid, c in tests.items():
        if c not in cluster_scores:
            cluster_scores[c] = _read_scores(state, sha, c)
        if sid in cluster_scores[c]:
            cffl[sid] = cluster_scores[c][sid]
    missing = sorted(set(tests) - (set(fedavg) & set(cffl)))
    if missing:
        raise _refuse(
            f"a test summary before the site scored all its test cases ({len(missing)} without "
            "the global or their cluster model's score)"
        )
    return {s: fedavg[s] for s in tests}, cffl


def run_dp_test(
    where: StageSite,
    directory: Mapping[str, tuple[bytes, Any]],
    party: Any,
    identity: Any,
    advance: Callable[[str, int], None],
) -> bytes:
    """Answer a checked ``dp-test`` request (``directory``: its decoded key directory, site id
    -> (masking key, signed entry)): the masked vector (uint64, little-endian)."""
    from securefed.crypto.secagg_keys import KeySignatureError, verify_masking_keys
    from securefed.privacy.ledger import Ledger
    from securefed.privacy.noise import distributed_discrete_gaussian_share, noise_source_for
    from securefed.privacy.test_summary import (
        RELEASE_ID,
        STAGE,
        plan_test_summary,
        site_vector,
    )
    from securefed.trust.site_key import pinned_site_keys

    loaded = where.accepted.loaded
    proto = loaded.protocol
    plan = plan_test_summary(proto)
    if plan is None or not proto.claims_finite_epsilon:
        raise _refuse("a DP test summary under a protocol without evaluation.dp_summary")
    if where.site.partition_id in set(proto.data.held_out_partitions):
        raise _refuse("a held-out institution takes no part in the test summary")
    own = directory.get(identity.party_id)
    if own is None or own[0] != party.public_key:
        raise _refuse("a key directory without this site's own masking key")
    try:
        verify_masking_keys(directory, pinned_site_keys(proto), loaded.sha256)
    except KeySignatureError as exc:
        raise _refuse(f"a key directory the protocol's sites did not sign ({exc})") from exc
    n = len(directory)
    if n < plan.min_sites or n <= plan.colluding:
        raise _refuse(f"{n} participant(s), under the protocol's minimum ({plan.min_sites}, more "
                      f"than {plan.colluding} colluding)")  # fmt: skip
    fedavg, cffl = _local_scores(where)
    local = site_vector(fedavg, cffl)
    advance(_PHASE, 1)  # answered once per protocol: a coordinator cannot ask another set
    sid = identity.party_id
    ledger = Ledger.for_protocol(where.state_dir, loaded, sid)
    with ledger.charge(STAGE, RELEASE_ID, plan.event()):
        share = distributed_discrete_gaussian_share(
            noise_source_for(proto, sid, "test-summary"), plan.sigma, n, local.shape,
            min_contributors=n - plan.colluding,
        )  # fmt: skip
        masked = party.mask(local + share, {s: key for s, (key, _) in directory.items()},
                            context=loaded.sha256.encode() + _CONTEXT,
                            round_label=b"test-summary")  # fmt: skip
    # the ledger's charge is the step's budget-spend entry; close the step with a signed head
    from securefed.trust.audit_log import AuditLog

    AuditLog(Path(where.state_dir), sid, loaded.sha256).sign_head(identity)
    return np.ascontiguousarray(masked, dtype="<u8").tobytes()
