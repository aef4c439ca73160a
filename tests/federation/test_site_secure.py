"""The secure-aggregate clustering at the site over the deployment
(securefed.federation.site_secure), through each site's whole ClientApp chain in-process: the
sites publish signed masking keys, an honest round's masked replies open only as their noised
sum, and a coordinator that substitutes a key, leaves a site out of its own directory, asks too
few sites, replays a round or asks for a round outside the plan is refused before any charge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message
from support.hostile import LAYOUT, Federation, pinned_federation
from support.study import TINY, reference_bounds

from securefed.clustering.secure import (
    MaskedAggregate,
    SecureClusteringServer,
    plan_secure_clustering,
)
from securefed.crypto import generate_keys
from securefed.crypto.masking import MaskingParty
from securefed.crypto.secagg_keys import sign_masking_key
from securefed.federation.site_rules import ReplyCode
from securefed.federation.site_secure import decode_signed, encode_directory

SUBSET = ["flair_firstorder_Mean", "t1_glcm_Contrast", "t2_firstorder_Entropy"]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """Three pinned sites of a secure-aggregate protocol with a tiny real federation."""
    from securefed.data.synth import synthesize

    base = tmp_path_factory.mktemp("secure")
    sha = reference_bounds(base)
    folder = base / "fed"

    def secure(data: dict[str, Any]) -> None:
        shutil.copyfile(base / "bounds.json", folder / "bounds.json")
        data["release"] = {"mode": "secure-aggregate", "projection": "subset", "subset": SUBSET,
                           "bounds": {"file": "bounds.json", "sha256": sha}}  # fmt: skip
        data["clustering"] = {"secure": {"epsilon": 1.0, "delta": 1e-6,
                                         "min_sites_per_aggregate": 3}}  # fmt: skip

    federation = pinned_federation(folder, edit=secure)
    synthesize(base / "data", preset=TINY, seed=0)
    for entry in (base / "data").iterdir():
        shutil.move(str(entry), str(folder / entry.name))
    return federation


def _keys(fed: Federation) -> dict[str, tuple[bytes, list[bytes]]]:
    out = {}
    for pid in LAYOUT:
        props = Federation.props(fed.query(pid, {"protocol-hash": fed.loaded.sha256,
                                         "stage": "secure-keys"}))  # fmt: skip
        out[f"site-{pid}"] = (props["masking-key"], decode_signed(props["signed"]))
    return out


def _round(fed: Federation, pid: int, directory: bytes, rnd: int = 0, **extra: Any) -> Message:
    config = {"protocol-hash": fed.loaded.sha256, "stage": "secure-round", "round": rnd,
              "kind": "histogram", "directory": directory, **extra}  # fmt: skip
    return fed.query(pid, config)


def _charges(fed: Federation, pid: int) -> int:
    return sum(e["event"] == "budget-spend" for e in fed.audit(pid))


def test_an_honest_round_opens_only_as_the_noised_sum(fed: Federation) -> None:
    keys = _keys(fed)
    assert all(len(k) == 32 for k, _ in keys.values())
    assert _keys(fed) == keys, "each site keeps its masking key for the protocol"
    kept = next(Path(fed.sites[1].work_dir).glob("*.secure-clustering.key"))
    assert kept.stat().st_mode & 0o777 == 0o600
    directory = encode_directory(keys)
    masked = {pid: Federation.props(_round(fed, pid, directory))["masked"] for pid in LAYOUT}
    plan = plan_secure_clustering(fed.loaded.protocol, len(SUBSET))
    server = SecureClusteringServer(plan, tuple(sorted(keys)))
    answers = [MaskedAggregate(f"site-{p}", 0, np.frombuffer(m, dtype="<u8").copy())
               for p, m in masked.items()]  # fmt: skip
    total = server.receive(0, answers)
    fit_cases = 12  # TINY's 15 cases minus the test split (seeded)
    assert abs(total.sum() - fit_cases) < 12 * plan.sigma("histogram") * np.sqrt(total.size)
    one = np.frombuffer(masked[1], dtype="<u8")
    assert len(np.unique(one)) > 0.9 * one.size, "a single masked vector looks uniform"
    assert all(_charges(fed, p) == 1 for p in LAYOUT)
    replay = _round(fed, 1, directory)  # round 0 again
    assert replay.has_error() and replay.error.code == ReplyCode.INSTRUCTION_REFUSED
    assert _charges(fed, 1) == 1


def test_a_substituted_or_missing_key_is_refused_before_any_charge(fed: Federation) -> None:
    keys = _keys(fed)
    impostor = generate_keys("site", "site-2")  # a key the protocol does not pin for site-2
    mine = MaskingParty.generate("site-2")
    forged = {**keys, "site-2": (mine.public_key, sign_masking_key(
        impostor, fed.loaded.sha256, mine.public_key).to_list())}  # fmt: skip
    before = _charges(fed, 3)
    reply = _round(fed, 3, encode_directory(forged), rnd=1, kind="stats",
                   centroids=json.dumps([[0.5] * 3] * 2).encode())  # fmt: skip
    assert reply.has_error() and reply.error.code == ReplyCode.INSTRUCTION_REFUSED
    not_mine = {k: v for k, v in keys.items() if k != "site-3"}
    reply = _round(fed, 3, encode_directory(not_mine), rnd=1)
    assert reply.has_error() and reply.error.code == ReplyCode.INSTRUCTION_REFUSED
    own_replaced = {**keys, "site-3": (MaskingParty.generate("site-3").public_key,
                                       keys["site-3"][1])}  # fmt: skip
    reply = _round(fed, 3, encode_directory(own_replaced), rnd=1)
    assert reply.has_error() and reply.error.code == ReplyCode.INSTRUCTION_REFUSED
    assert _charges(fed, 3) == before


def test_too_few_participants_or_a_round_outside_the_plan_is_refused(fed: Federation) -> None:
    keys = _keys(fed)
    two = {k: v for k, v in keys.items() if k != "site-1"}  # min_sites_per_aggregate = 3
    before = _charges(fed, 2)
    reply = _round(fed, 2, encode_directory(two), rnd=5)
    assert reply.has_error()
    reply = _round(fed, 2, encode_directory(keys), rnd=99)  # past the plan's rounds
    assert reply.has_error()
    reply = _round(fed, 2, encode_directory(keys), rnd="1")  # type: ignore[arg-type]
    assert reply.has_error() and reply.error.code == ReplyCode.INSTRUCTION_REFUSED
    assert _charges(fed, 2) == before
    # a malformed request did not burn a round: the plan's next round is still answered
    plan = plan_secure_clustering(fed.loaded.protocol, len(SUBSET))
    centroids = json.dumps([[0.5] * len(SUBSET)] * plan.k).encode()
    reply = _round(fed, 2, encode_directory(keys), rnd=1, kind=plan.rounds[1],
                   centroids=centroids)  # fmt: skip
    assert not reply.has_error(), reply.error
    assert _charges(fed, 2) == before + 1


def test_the_guard_and_the_request_rules_hold_for_the_secure_stages(fed: Federation) -> None:
    reply = fed.query(1, {"protocol-hash": fed.loaded.sha256, "stage": "secure-keys",
                            "lr": 0.1})  # fmt: skip
    assert reply.has_error() and reply.error.code == ReplyCode.INSTRUCTION_REFUSED
    reply = fed.query(1, {"protocol-hash": fed.loaded.sha256, "stage": "secure-round"})
    assert reply.has_error() and reply.error.code == ReplyCode.INSTRUCTION_REFUSED


def test_crafted_centroids_change_neither_the_charge_nor_the_noise_plan(fed: Federation) -> None:
    """The coordinator's centroids are used as sent (clipped into the unit box): a round with
    centroids of its choosing is charged the same DP event as an honest site's round, which is
    the plan's (from the protocol alone), so they cannot raise what the round releases."""
    from securefed.privacy.accounting import event_to_json
    from securefed.privacy.ledger import read_ledger

    keys = _keys(fed)
    plan = plan_secure_clustering(fed.loaded.protocol, len(SUBSET))
    crafted = json.dumps([[-5.0] * len(SUBSET)] + [[1.0] * len(SUBSET)] * (plan.k - 1)).encode()
    reply = _round(fed, 1, encode_directory(keys), rnd=1, kind=plan.rounds[1], centroids=crafted)
    assert not reply.has_error(), reply.error
    events = [
        event_to_json(read_ledger(Path(fed.sites[p].work_dir) / "ledger.jsonl")
                      .charges["secure-clustering/round-1"].event)
        for p in (1, 2)  # site 2 answered round 1 with honest centroids (the test above)
    ]  # fmt: skip
    assert events[0] == events[1] == event_to_json(plan.event())
