"""A Flower Grid that forwards to another and lets the coordinator look at (and drop) what passes:
the base of the coordinator's adapters around Flower's workflows
(securefed.federation.secagg_relay, securefed.federation.ledger_heads).

Nothing here leaves a site (coordinator side). Tests: ``tests/adversary/``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["GridWrapper"]


class GridWrapper(Grid):
    """``grid`` with two hooks: :meth:`outgoing` may change a message before it is sent,
    :meth:`incoming` sees every reply and returns False to drop it (as if the site had not
    answered)."""

    def __init__(self, grid: Grid) -> None:
        self.inner = grid

    def outgoing(self, msg: Message) -> Message:
        return msg

    def incoming(self, reply: Message) -> bool:
        return True

    @property
    def run(self) -> Any:
        return self.inner.run

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages([self.outgoing(m) for m in messages])

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [r for r in self.inner.pull_messages(message_ids) if self.incoming(r)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = [self.outgoing(m) for m in messages]
        return [r for r in self.inner.send_and_receive(sent, timeout=timeout) if self.incoming(r)]
