"""The coordinator's half of authenticated SecAgg+ key agreement: a Grid wrapper around Flower's
``SecAggPlusWorkflow`` that relays each site's signature over its SecAgg+ public keys
(securefed.crypto.secagg_keys) with the keys it forwards.

Flower's workflow collects (pk1, pk2) from the setup replies and forwards every node's
neighbours' keys in the share-keys request; it knows nothing of signatures. This wrapper keeps the
signature record of each setup reply (by source node) and adds, to each share-keys request, the
signatures of the neighbours that request lists. The sites check them
(securefed.federation.site_rules); an honest coordinator only relays, a deviating one cannot
forge them. What it relays is what the sites sent: site ids, public signing keys, signatures.
Tests: ``tests/adversary/test_signed_secagg_keys.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp import Grid

__all__ = ["KEYSIG_RECORD", "KEYSIGS_RECORD", "SignedKeyRelay"]

KEYSIG_RECORD = "securefed.secagg-keysig"
"""A site's setup reply: ``{"signed": [site id, Ed25519 public key, signature]}``."""
KEYSIGS_RECORD = "securefed.secagg-keysigs"
"""A share-keys request: ``{str(node id): [site id, public key, signature]}`` per neighbour."""


class SignedKeyRelay(Grid):
    """``grid`` with the SecAgg+ key signatures relayed (see the module docstring)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self._signed: dict[int, list[bytes]] = {}

    @property
    def run(self) -> Any:
        return self._grid.run

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages([self._attach(m) for m in messages])

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        for reply in replies:
            self._collect(reply)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self._grid.send_and_receive([self._attach(m) for m in messages],
                                                   timeout=timeout))  # fmt: skip
        for reply in replies:
            self._collect(reply)
        return replies

    def _attach(self, msg: Message) -> Message:
        if not msg.has_content():
            return msg
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is None:
            return msg
        if configs.get(Key.STAGE) == Stage.SETUP:
            self._signed.clear()  # a new SecAgg+ round: fresh keys
        elif configs.get(Key.STAGE) == Stage.SHARE_KEYS:
            relayed = {k: self._signed[int(k)] for k in configs
                       if k != Key.STAGE and int(k) in self._signed}  # fmt: skip
            msg.content.config_records[KEYSIGS_RECORD] = ConfigRecord(relayed)  # type: ignore[arg-type]
        return msg

    def _collect(self, reply: Message) -> None:
        if reply.has_error() or not reply.has_content():
            return
        record = reply.content.config_records.get(KEYSIG_RECORD)
        if record is not None and isinstance(record.get("signed"), list):
            self._signed[int(reply.metadata.src_node_id)] = list(record["signed"])  # type: ignore[arg-type]
