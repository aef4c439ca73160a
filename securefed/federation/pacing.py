"""Reply pacing: a site's training replies leave on a fixed time grid, not when its work ends.

How long a site takes to answer a training message grows with what it holds (data loading, the
number of cases it crops from, a cluster's share of them), so a reply sent as soon as it is ready
tells the server something about the site's patients. With ``training.reply_slot_s = P > 0`` in
the site's own protocol copy, the reply to every message that runs local training (a plain or BFV
``train`` message; SecAgg+'s ``collect_masked_vectors`` stage) leaves ``k * P`` seconds after the
message arrived, for the smallest whole ``k >= 1`` the work allows. While the work fits in one slot
every reply of every site leaves exactly ``P`` after its request: the timing is a function of the
protocol alone. A reply that overruns leaves at the next slot boundary (the server learns the slot
count, the logarithm of what a plain reply would tell) and the site records the overrun in its
audit log, so the operator can raise ``P``.

Messages that run no local training (SecAgg+'s setup, key-sharing and unmasking stages, the
budget query, evaluation requests that a finite-epsilon protocol answers without a metric) do work
that depends on public values only and leave unpaced.

Tests: ``tests/federation/test_pacing.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)

__all__ = ["Pacing", "make_pacing_mod", "runs_local_training", "slots_for"]


@dataclass(frozen=True)
class Pacing:
    """A site's pacing for one context: the slot length (0: replies leave when ready) and what to
    call when a reply overruns its first slot (with the number of slots it took)."""

    slot_s: float
    on_overrun: Callable[[int], None] | None = None


def runs_local_training(msg: Message) -> bool:
    """Whether answering ``msg`` runs the site's local training: a function of the message's
    public type and SecAgg+ stage only."""
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return False
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None:  # plain FedAvg or BFV: the train message itself
        return True
    return str(configs.get(Key.STAGE, "")) == Stage.COLLECT_MASKED_VECTORS


def slots_for(elapsed_s: float, slot_s: float) -> int:
    """The whole number of slots (at least 1) a reply whose work took ``elapsed_s`` waits for."""
    if slot_s <= 0:
        raise ValueError("slot_s must be > 0")
    return max(1, math.ceil(elapsed_s / slot_s))


def make_pacing_mod(
    pacing_of: Callable[[Context], Pacing],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Mod:
    """A ClientApp mod (place it outermost) that holds each local-training reply until its slot
    boundary; ``pacing_of`` reads the slot from the site's own protocol copy, never from the
    server's message. A reply that carries an error is paced like any other."""

    def pacing_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if not runs_local_training(msg):
            return call_next(msg, ctxt)
        pacing = pacing_of(ctxt)
        if pacing.slot_s <= 0:
            return call_next(msg, ctxt)
        start = clock()
        try:
            return call_next(msg, ctxt)
        finally:
            slots = slots_for(clock() - start, pacing.slot_s)
            if slots > 1 and pacing.on_overrun is not None:
                pacing.on_overrun(slots)
            remaining = start + slots * pacing.slot_s - clock()
            if remaining > 0:
                sleep(remaining)

    return pacing_mod
