"""Ledger heads (securefed.federation.ledger_heads): a site training under DP quotes its ledger
head, signed, in every training reply; the coordinator drops a reply whose ledger went back (a
deleted or rolled-back ledger would refund the site's spent budget unnoticed), across phases and
resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import Metadata
from support.hostile import pinned_federation, secagg_until_unmask

from securefed.crypto import verify_ed25519
from securefed.federation.grid_wrapper import GridWrapper
from securefed.federation.ledger_heads import (
    HEADS_FILE,
    LEDGER_HEAD_RECORD,
    LedgerHeadCheck,
    head_message,
)
from securefed.privacy.ledger import read_ledger


def _client_dp(data: dict[str, Any]) -> None:
    data["privacy"]["total_epsilon"] = 8.0
    data["training"]["client_dp"] = {"enabled": True, "epsilon": 8.0, "max_sites": 3,
                                     "clip_norm": 1.0}  # fmt: skip


def test_a_dp_training_reply_quotes_the_signed_ledger_head(tmp_path: Path) -> None:
    fed = pinned_federation(tmp_path / "fed", edit=_client_dp)
    replies = secagg_until_unmask(fed)
    for pid, reply in zip((1, 2, 3), replies, strict=True):
        assert not reply.has_error(), reply.error  # the egress guard let the record through
        record = reply.content.config_records[LEDGER_HEAD_RECORD]
        state = read_ledger(Path(fed.sites[pid].work_dir) / "ledger.jsonl")
        assert record["entries"] == len(state.entries)
        assert record["head"] == state.head
        site, public, sig = record["signed"]
        assert site == f"site-{pid}".encode()
        message = head_message(fed.loaded.sha256, f"site-{pid}", len(state.entries), state.head)
        assert verify_ed25519(public, message, sig)


def test_a_training_reply_without_dp_quotes_nothing(tmp_path: Path) -> None:
    fed = pinned_federation(tmp_path / "fed")
    for reply in secagg_until_unmask(fed):
        assert LEDGER_HEAD_RECORD not in reply.content.config_records


def _reply(node: int, entries: int, head: str) -> Message:
    content = RecordDict()
    content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": 1})
    content.config_records[LEDGER_HEAD_RECORD] = ConfigRecord({"entries": entries, "head": head})
    meta = Metadata(run_id=1, message_id="m", src_node_id=node, dst_node_id=0,
                    reply_to_message_id="r", group_id="1", created_at=0.0, ttl=60.0,
                    message_type=MessageType.TRAIN)  # fmt: skip
    return Message(metadata=meta, content=content)  # type: ignore[call-overload]


class _Replies(GridWrapper):
    """A grid whose sites answer with the replies queued by the test."""

    def __init__(self) -> None:
        self.queue: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[override]
        out, self.queue = self.queue, []
        return out


@pytest.mark.parametrize(
    ("entries", "head", "kept"),
    [
        (5, "sha256:b", True),
        (4, "sha256:a", True),
        (3, "sha256:x", False),
        (4, "sha256:other", False),
    ],
)
def test_the_coordinator_drops_a_ledger_that_went_back(
    tmp_path: Path, entries: int, head: str, kept: bool
) -> None:
    inner = _Replies()
    check = LedgerHeadCheck(inner, {101: 1, 102: 2}.get, tmp_path)
    inner.queue = [_reply(101, 4, "sha256:a"), _reply(102, 7, "sha256:z")]
    assert len(list(check.send_and_receive([]))) == 2
    # a later round, or a later phase or a resumed run (the heads are kept in the run folder)
    later = LedgerHeadCheck(inner, {101: 1, 102: 2}.get, tmp_path)
    assert (tmp_path / HEADS_FILE).is_file()
    inner.queue = [_reply(101, entries, head), _reply(102, 8, "sha256:y")]
    got = [int(r.metadata.src_node_id) for r in later.send_and_receive([])]
    assert got == ([101, 102] if kept else [102])


def test_the_guard_and_the_egress_census_know_the_record() -> None:
    from securefed.audit import egress
    from securefed.federation.guard import _without_ledger_head

    assert egress.LEDGER_HEAD == LEDGER_HEAD_RECORD
    assert "ledger head" in egress._PUBLIC_REPLY_FIELDS[LEDGER_HEAD_RECORD + "."]
    content = RecordDict()
    content.config_records[LEDGER_HEAD_RECORD] = ConfigRecord({"entries": 1, "head": "h"})
    assert _without_ledger_head(content, {LEDGER_HEAD_RECORD, "x"}, []) == ({"x"}, [])
    content.config_records[LEDGER_HEAD_RECORD] = ConfigRecord({"entries": 1, "spent": 3.0})
    _, problems = _without_ledger_head(content, {LEDGER_HEAD_RECORD}, [])
    assert problems == ["undeclared fields beside the ledger head"]
