"""A Flower Grid that forwards to another and lets the coordinator look at (and drop) what passes:
the base of the coordinator's adapters around Flower's workflows
(securefed.federation.secagg_relay, securefed.federation.ledger_heads); and the grid every
securefed ServerApp runs on (:func:`fast_polling`): in a deployment, Flower's grid waits a fixed
3 s between pulls for replies, this one 0.2 s; and in both engines it stops waiting once
:data:`STOP` is set (Ctrl-C of the coordinator's process: Flower's simulation leaves its
ServerApp thread waiting for replies that never come, and the process could not exit).

Nothing here leaves a site (coordinator side). Tests: ``tests/adversary/``,
``tests/federation/test_flower_internals.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from securefed.errors import TrainingError
from securefed.federation.flower_internals import HttpGrid, InMemoryGrid

__all__ = ["INMEMORY_POLL_S", "POLL_S", "STOP", "FastPollGrid", "GridWrapper", "fast_polling"]

POLL_S = 0.2
"""How often the ServerApp asks the SuperLink for replies while it waits (Flower 1.42: 3 s)."""
INMEMORY_POLL_S = 0.1
"""The same in the simulation engine (Flower's own in-memory grid polls every 0.1 s)."""
STOP = threading.Event()
"""Set when the coordinator's process is interrupted (simulation.run_simulation_phase on
Ctrl-C): a ServerApp waiting for replies gives up at its next poll (TrainingError; the phase's
checkpoint keeps its last round, a rerun resumes)."""


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


class FastPollGrid(GridWrapper):
    """``grid`` whose :meth:`send_and_receive` polls for replies every ``poll_s`` seconds: it
    pushes with the grid's public ``push_messages`` and pulls with ``pull_messages`` until every
    message has its reply or ``timeout`` seconds have passed (None: no limit), and returns the
    replies received, as Flower's ``send_and_receive`` does. A message the SuperLink did not
    accept (``push_messages`` gives None for it; Flower logs a warning) has no reply to wait
    for. Once :data:`STOP` is set it stops waiting (TrainingError)."""

    def __init__(self, grid: Grid, poll_s: float = POLL_S) -> None:
        super().__init__(grid)
        self.poll_s = poll_s

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = {i for i in self.push_messages(messages) if i is not None}
        end = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while pending and (timeout is None or time.monotonic() < end):
            if STOP.is_set():
                raise TrainingError(
                    "interrupted (Ctrl-C) while waiting for the sites' replies; rerun to resume"
                )
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                left = self.poll_s if timeout is None else end - time.monotonic()
                time.sleep(max(0.0, min(self.poll_s, left)))
        return replies


def fast_polling(grid: Grid, poll_s: float = POLL_S) -> Grid:
    """The grid a securefed ServerApp runs on: Flower's deployment grid (HttpGrid, which sleeps
    3 s between pulls) and the simulation's in-memory grid wrapped in :class:`FastPollGrid`
    (polling every ``poll_s`` / :data:`INMEMORY_POLL_S` seconds, stopping on :data:`STOP`); any
    other grid (a test's) as it is."""
    if isinstance(grid, HttpGrid):
        return FastPollGrid(grid, poll_s)
    if isinstance(grid, InMemoryGrid):
        return FastPollGrid(grid, INMEMORY_POLL_S)
    return grid
