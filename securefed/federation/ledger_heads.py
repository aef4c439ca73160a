"""Ledger heads in training replies: a site that trains under DP (DP-SGD or client-level DP)
quotes the head of its privacy ledger (the hash of its last entry and the number of entries),
signed with its pinned key where the protocol pins one, in every training reply; the coordinator
keeps the last head of each site for the run and drops a reply whose ledger went back (fewer
entries, or the same number with another head): a site whose ledger was deleted or rolled back
would otherwise be refunded its spent budget unnoticed.

Site side: :func:`make_ledger_head_mod` (inside the egress guard, which checks the record).
Coordinator side: :class:`LedgerHeadCheck`, a Grid wrapper around every aggregation's rounds; the
heads it saw are kept in ``ledger-heads.json`` beside the run's phase folders, so the check spans
the phases and survives a resume.

What leaves a site: the head (a hash of entries whose charges follow the protocol's public plan),
the entry count and a signature. Tests: ``tests/adversary/test_ledger_heads.py``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.serverapp import Grid

from securefed.crypto import PrivateKeys
from securefed.federation.flower_internals import ClientAppCallable, Mod
from securefed.federation.grid_wrapper import GridWrapper
from securefed.fileio import read_json, write_json_atomic
from securefed.privacy.ledger import LEDGER_FILE, read_ledger

__all__ = [
    "HEADS_FILE",
    "LEDGER_HEAD_RECORD",
    "HeadSite",
    "LedgerHeadCheck",
    "head_message",
    "make_ledger_head_mod",
]

log = logging.getLogger("securefed.ledger_heads")

LEDGER_HEAD_RECORD = "securefed.ledger-head"
"""``{"entries": int, "head": str, "signed": [site id, public key, signature]}`` (signed: when
the protocol pins the site's key)."""
HEADS_FILE = "ledger-heads.json"
_DOMAIN = b"securefed-ledger-head-v1\x00"


@dataclass(frozen=True)
class HeadSite:
    """What the site's mod needs: its protocol hash, whether it trains under DP, its state
    folder (the ledger's) and its signing key (None: the protocol pins none)."""

    sha256: str
    dp_training: bool
    state_dir: str
    key: PrivateKeys | None


def head_message(protocol_sha256: str, site_id: str, entries: int, head: str) -> bytes:
    """The bytes a site signs for its ledger head."""
    parts = (protocol_sha256, site_id, str(int(entries)), head)
    return _DOMAIN + b"\x00".join(hashlib.sha256(p.encode()).digest() for p in parts)


def _is_training_reply(reply: Message) -> bool:
    """A reply that carries a training result (under SecAgg+: the masked-vector stage's)."""
    return (
        not reply.has_error()
        and reply.has_content()
        and "fitres.num_examples" in reply.content.metric_records
    )


def make_ledger_head_mod(resolve: Callable[[Context], HeadSite]) -> Mod:
    """A client mod that adds the site's ledger head to each training reply under DP."""

    def ledger_head_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, ctxt)
        if msg.metadata.message_type != MessageType.TRAIN or not _is_training_reply(reply):
            return reply
        site = resolve(ctxt)
        path = Path(site.state_dir) / LEDGER_FILE if site.state_dir else None
        if not site.dp_training or path is None or not path.is_file():
            return reply
        state = read_ledger(path)
        record: dict[str, Any] = {"entries": len(state.entries), "head": state.head}
        if site.key is not None:
            sig = site.key.sign(head_message(site.sha256, site.key.party_id, len(state.entries),
                                             state.head))  # fmt: skip
            record["signed"] = [site.key.party_id.encode(), site.key.public.signing_public, sig]
        reply.content.config_records[LEDGER_HEAD_RECORD] = ConfigRecord(record)
        return reply

    return ledger_head_mod


class LedgerHeadCheck(GridWrapper):
    """The coordinator's check (see the module docstring). ``partition_of``: the partition of a
    node id (None: unknown node, never dropped here); ``folder``: where ``ledger-heads.json``
    lives (the run's phases folder)."""

    def __init__(
        self, grid: Grid, partition_of: Callable[[int], int | None], folder: str | Path
    ) -> None:
        super().__init__(grid)
        self.partition_of = partition_of
        self.path = Path(folder) / HEADS_FILE
        self.heads: dict[str, dict[str, Any]] = (
            dict(read_json(self.path)) if self.path.is_file() else {}
        )

    def incoming(self, reply: Message) -> bool:
        if not _is_training_reply(reply):
            return True
        record = reply.content.config_records.get(LEDGER_HEAD_RECORD)
        pid = self.partition_of(int(reply.metadata.src_node_id))
        if record is None or pid is None:
            return True
        raw_entries: Any = record.get("entries", -1)
        entries, head = int(raw_entries), str(record.get("head", ""))
        last = self.heads.get(str(pid))
        if last is not None and (
            entries < int(last["entries"])
            or (entries == int(last["entries"]) and head != last["head"])
        ):
            log.warning(
                "site of partition %s: its privacy ledger went back (%s entries, head %s; it "
                "quoted %s entries, head %s before): its reply is dropped",
                pid, entries, head[:19], last["entries"], str(last["head"])[:19],
            )  # fmt: skip
            return False
        self.heads[str(pid)] = {"entries": entries, "head": head}
        write_json_atomic(self.path, self.heads)
        return True
