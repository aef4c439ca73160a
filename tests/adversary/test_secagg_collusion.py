"""What SecAgg+ holds against a coordinator that deviates in the unmask stage.

Flower's SecAgg+ has no consistency round: each site answers its own unmask request, so a
coordinator can tell some neighbours that site 1 is active (they send shares of its self-mask
seed b_1) and others that it dropped out (they send shares of its pairwise-mask key sk1_1). With
both secrets it removes every mask of site 1's vector. Each site answers one unmask per round,
never gives both shares of one node in one request, and counts itself active, so with ``k``
shares and threshold ``t`` the coordinator gets at most ``1 + a`` shares of b_1 and ``d`` of
sk1_1 from honest sites (a + d <= k - 1); ``c`` colluding sites give both. Both reach ``t`` only
when ``c >= 2t - k``. The protocol therefore requires ``2t > k`` (securefed.protocol.schema), and
at the shipped ``k = 3, t = 2`` the coordinator alone fails while one colluding site suffices:
this file shows both on the real ClientApp chain (authenticated keys, every mod, every site
trains), reading the ground truth from site 1's own Flower state."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import MessageType
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from support.hostile import Federation, pinned_federation, secagg_until_unmask

from securefed.federation.flower_internals import RECORD_KEY_CONFIGS
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import SecAggPlusStage as Stage

TARGET = 101  # site 1's node id


def _state(fed: Federation, pid: int) -> SecAggPlusState:
    return SecAggPlusState(**fed.contexts[pid].state.config_records[RECORD_KEY_STATE])


def _unmask(fed: Federation, pid: int, active: list[int], dead: list[int]) -> dict[int, bytes]:
    """Site ``pid``'s answer to an unmask request: node id -> the share it sent."""
    request = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active,
               Key.DEAD_NODE_ID_LIST: dead}  # fmt: skip
    content = fed.train_content(fed.honest_config(), request)
    reply = fed.deliver(fed.message(pid, MessageType.TRAIN, content))
    assert not reply.has_error(), reply.error
    rec = reply.content.config_records[RECORD_KEY_CONFIGS]
    return dict(zip(rec[Key.NODE_ID_LIST], rec[Key.SHARE_LIST], strict=True))


def _recovers(shares: list[bytes], secret: bytes) -> bool:
    if len(shares) < 2:
        return False
    try:
        return combine_shares(shares) == secret
    except ValueError:
        return False


@pytest.fixture(scope="module")
def split_round(tmp_path_factory: pytest.TempPathFactory):
    """One honest round to its unmask stage; then the coordinator's most favourable inconsistent
    requests: site 2 is told node 101 is active, site 3 that it dropped out."""
    fed = pinned_federation(tmp_path_factory.mktemp("collusion") / "fed")
    assert not any(r.has_error() for r in secagg_until_unmask(fed))
    truth = _state(fed, 1)
    b_shares = [_unmask(fed, 1, [101, 102], [103])[TARGET],
                _unmask(fed, 2, [101, 102], [103])[TARGET]]  # fmt: skip
    sk1_shares = [_unmask(fed, 3, [102, 103], [101])[TARGET]]
    return fed, truth, b_shares, sk1_shares


def test_a_coordinator_alone_cannot_unmask_a_site(split_round) -> None:
    """k = 3, t = 2: it gets site 1's self-mask seed (site 1 is active, as in every honest
    round) but one share of its pairwise-mask key; a second unmask request is refused."""
    fed, truth, b_shares, sk1_shares = split_round
    assert _recovers(b_shares, truth.rd_seed)
    assert not _recovers(sk1_shares, truth.sk1)
    again = fed.deliver(fed.message(2, MessageType.TRAIN, fed.train_content(
        fed.honest_config(), {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [102, 103],
                              Key.DEAD_NODE_ID_LIST: [101]})))  # fmt: skip
    assert again.has_error()


def test_one_colluding_site_completes_the_unmasking_at_k3_t2(split_round) -> None:
    """The documented limit (c >= 2t - k = 1): site 2 colluding hands over the share of sk1_1 it
    holds, and the coordinator has both of site 1's secrets."""
    fed, truth, b_shares, sk1_shares = split_round
    colluder = _state(fed, 2).sk1_share_dict[TARGET]
    assert _recovers([*sk1_shares, colluder], truth.sk1)
    assert _recovers(b_shares, truth.rd_seed)


def test_the_protocol_requires_a_threshold_above_half_the_shares(tmp_path: Path) -> None:
    """2t <= k would let the coordinator alone split honest neighbours into t active and t dead
    answers: refused by the protocol check."""
    from securefed.protocol.schema import SecureAggregationSpec

    assert SecureAggregationSpec(num_shares=5, reconstruction_threshold=3).secaggplus_problem() \
        is None  # fmt: skip
    problem = SecureAggregationSpec(num_shares=5, reconstruction_threshold=2).secaggplus_problem()
    assert problem is not None
    assert "more than half" in problem
    problem = SecureAggregationSpec(num_shares=4, reconstruction_threshold=2).secaggplus_problem()
    assert problem is not None
