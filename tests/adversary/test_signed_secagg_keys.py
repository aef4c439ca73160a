"""Authenticated SecAgg+ key agreement against a coordinator that makes up neighbours.

Without it a coordinator answers a site's setup with a neighbour set of its own fresh keys (a
Sybil set): every pairwise mask is agreed with the coordinator, which then removes them all. Here
the protocol pins each site's signing key; each site signs its fresh SecAgg+ keys, the
coordinator relays the signatures (securefed.federation.secagg_relay.SignedKeyRelay around the
Flower workflow's grid), and a site answers the share-keys stage only when every neighbour's keys
carry the signature of a distinct pinned site. Real ClientApp chain, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, MessageType
from support.hostile import LAYOUT, Federation, InProcessGrid, pinned_federation

from securefed.crypto import generate_keys
from securefed.crypto.secagg_keys import sign_secagg_keys
from securefed.federation.flower_internals import (
    RECORD_KEY_CONFIGS,
    generate_key_pairs,
    public_key_to_bytes,
)
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import SecAggPlusStage as Stage
from securefed.federation.secagg_relay import KEYSIG_RECORD, KEYSIGS_RECORD, SignedKeyRelay
from securefed.federation.site_rules import ReplyCode

SITES = tuple(LAYOUT)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    return pinned_federation(tmp_path_factory.mktemp("signed") / "fed")


def _setup(fed: Federation, relay: SignedKeyRelay) -> dict[int, list[bytes]]:
    """The honest setup stage through the relay: each site's (pk1, pk2) by node id."""
    msgs = [fed.message(p, MessageType.TRAIN,
                        fed.train_content(fed.honest_config(), fed.honest_setup()))
            for p in SITES]  # fmt: skip
    replies = list(relay.send_and_receive(msgs))
    assert not any(r.has_error() for r in replies)
    out = {}
    for r in replies:
        assert set(r.content.config_records[KEYSIG_RECORD].keys()) == {"signed"}
        rec = r.content.config_records[RECORD_KEY_CONFIGS]
        out[int(r.metadata.src_node_id)] = [rec[Key.PUBLIC_KEY_1], rec[Key.PUBLIC_KEY_2]]
    return out


def _share_keys(fed: Federation, pid: int, neighbours: dict[int, Any],
                relayed: dict[str, Any] | None) -> Message:  # fmt: skip
    content = fed.train_content(fed.honest_config(),
                                {Key.STAGE: Stage.SHARE_KEYS,
                                 **{str(n): v for n, v in neighbours.items()}})  # fmt: skip
    if relayed is not None:
        content.config_records[KEYSIGS_RECORD] = ConfigRecord(relayed)
    return fed.deliver(fed.message(pid, MessageType.TRAIN, content))


def _refused(fed: Federation, reply: Message, pid: int, code: ReplyCode) -> None:
    assert reply.has_error()
    assert not reply.has_content()
    assert reply.error.code == int(code)
    assert reply.error.reason == code.reason
    assert int(code) in [int(r["code"]) for r in fed.refusals(pid)]


def _fresh_pair() -> list[bytes]:
    (_, pk1), (_, pk2) = generate_key_pairs(), generate_key_pairs()
    return [public_key_to_bytes(pk1), public_key_to_bytes(pk2)]


def test_an_honest_relay_authenticates_every_neighbour(fed: Federation) -> None:
    """The setup replies carry each site's signature (the egress guard lets it through); the
    relay attaches the neighbours' signatures to the share-keys requests; every site answers."""
    relay = SignedKeyRelay(InProcessGrid(fed))
    keys = _setup(fed, relay)
    msgs = [fed.message(p, MessageType.TRAIN, fed.train_content(
        fed.honest_config(), {Key.STAGE: Stage.SHARE_KEYS,
                              **{str(n): v for n, v in keys.items()}})) for p in SITES]  # fmt: skip
    replies = list(relay.send_and_receive(msgs))
    assert [r.has_error() for r in replies] == [False] * 3
    assert all(Key.CIPHERTEXT_LIST in r.content.config_records[RECORD_KEY_CONFIGS]
               for r in replies)  # fmt: skip


def test_made_up_neighbours_are_refused_before_any_data(fed: Federation) -> None:
    """The Sybil set: the site's own signed keys plus two pairs the coordinator generated,
    unsigned, then signed by a fresh key of the coordinator's that claims to be site-2."""
    relay = SignedKeyRelay(InProcessGrid(fed))
    keys = _setup(fed, relay)
    own = 101
    own_sig = relay._signed[own]
    fake = {901: _fresh_pair(), 902: _fresh_pair()}
    fed.loads.clear()
    reply = _share_keys(fed, 1, {own: keys[own], **fake}, {str(own): own_sig})
    _refused(fed, reply, 1, ReplyCode.INSTRUCTION_REFUSED)
    impostor = generate_keys("site", "site-2")
    forged = {str(n): sign_secagg_keys(impostor, fed.loaded.sha256, n, *map(bytes, v)).to_list()
              for n, v in fake.items()}  # fmt: skip
    reply = _share_keys(fed, 1, {own: keys[own], **fake}, {str(own): own_sig, **forged})
    _refused(fed, reply, 1, ReplyCode.INSTRUCTION_REFUSED)
    assert fed.loads == []


def test_a_relay_that_drops_or_moves_signatures_is_refused(fed: Federation) -> None:
    """No signature record at all; site-2's signed keys shown under a second node id too (one
    site in two neighbour places); the site's own signature missing."""
    relay = SignedKeyRelay(InProcessGrid(fed))
    keys = _setup(fed, relay)
    sigs = {str(n): s for n, s in relay._signed.items()}
    _refused(fed, _share_keys(fed, 1, keys, None), 1, ReplyCode.INSTRUCTION_REFUSED)
    twice = {**keys, 104: keys[102]}
    reply = _share_keys(fed, 1, twice, {**sigs, "104": sigs["102"]})
    _refused(fed, reply, 1, ReplyCode.INSTRUCTION_REFUSED)
    without_own = {k: v for k, v in sigs.items() if k != "101"}
    _refused(fed, _share_keys(fed, 1, keys, without_own), 1, ReplyCode.INSTRUCTION_REFUSED)


def test_a_site_without_its_key_refuses_the_setup(tmp_path: Path) -> None:
    """The protocol pins the site's signing key and SITE.toml names none: the site cannot sign
    its SecAgg+ keys, so it refuses the round before generating any (trust refusal)."""
    fed = pinned_federation(tmp_path / "nokey", with_keys=False)
    reply = fed.fit(1, fed.honest_config(), secagg=fed.honest_setup())
    _refused(fed, reply, 1, ReplyCode.TRUST_REFUSED)


def test_the_signature_is_declared_public_in_the_egress_census() -> None:
    from securefed.audit import egress

    assert egress.KEYSIG_RECORD == KEYSIG_RECORD
    decl = egress._PUBLIC_REPLY_FIELDS[KEYSIG_RECORD + "."]
    assert "signature" in decl
