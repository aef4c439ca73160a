"""Reply pacing: a site's training replies leave at a fixed time, not when its work ends.

How long a site takes to answer a training message grows with what it holds (data loading, the
number of cases it crops from, a cluster's share of them), so a reply sent as soon as it is ready
tells the server something about the site's patients. With ``training.reply_slot_s = P > 0`` in
the site's own protocol copy, the reply to every message that runs local training (a plain or BFV
``train`` message; SecAgg+'s ``collect_masked_vectors`` stage) leaves exactly ``P`` seconds after
the message arrived: the timing is a function of the protocol alone. The deployment's test
requests (an evaluate message naming the ``test`` stage) are paced the same way where the site
scores its test cases without sending a metric (``evaluation.dp_summary``: it keeps their Dice for
the DP summary); elsewhere it answers them without that work.
The stage requests whose work reads the site's cases (:data:`DATA_STAGES`: the features
release, the assignment of its cases, a secure clustering round) are paced too: a features
release that overruns (the first request extracts the radiomics) is finished in the background
and kept in the site's outbox, so the coordinator's next request gets the same envelope within
the slot.
The work runs in a worker thread; when it has not finished at ``P`` its reply is **dropped**:
the site answers at ``P`` with the fixed ``slot-overrun`` code instead
(securefed.federation.site_rules.ReplyCode), the late reply is discarded when the work ends, and
the site records the overrun in its audit log without how long the work took, so the operator can
raise ``P``. What the server learns is one bit per
round (whether the site's work fit ``P``), at a time fixed by the protocol; the egress table says
so. One site runs one piece of local training at a time: a message that arrives while a dropped
reply's work still runs waits for it (inside its own slot).

Messages that run no local training (SecAgg+'s setup, key-sharing and unmasking stages, the
budget query, evaluation requests that a finite-epsilon protocol answers without a metric) do work
that depends on public values only and leave unpaced.

Tests: ``tests/federation/test_pacing.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Context, Message, MessageType
from flwr.common import MessageTypeLegacy

from securefed.federation.flower_internals import RECORD_KEY_CONFIGS, ClientAppCallable, Mod
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import SecAggPlusStage as Stage

__all__ = [
    "DATA_STAGES",
    "Outcome",
    "Pacing",
    "make_pacing_mod",
    "reads_cases",
    "run_with_deadline",
    "runs_local_training",
    "scores_test_cases",
]


@dataclass(frozen=True)
class Pacing:
    """A site's pacing for one context: the slot length (0: replies leave when ready) and what to
    call when a reply is dropped because its work overran the slot."""

    slot_s: float
    on_overrun: Callable[[], None] | None = None
    scores_tests: bool = False  # the site scores its test cases on a test request (dp_summary)


@dataclass
class Outcome:
    """What the work gave by the deadline: its reply, its exception, or nothing yet."""

    done: bool
    reply: Message | None = None
    error: BaseException | None = None


Runner = Callable[[Callable[[], Message], float], Outcome]

_ONE_AT_A_TIME = threading.Lock()  # one piece of local training per site process


def run_with_deadline(work: Callable[[], Message], timeout_s: float) -> Outcome:
    """Run ``work`` in a worker thread; wait at most ``timeout_s``. The worker holds the site's
    training lock until it ends, so a later message's work starts after it."""
    outcome = Outcome(done=False)
    finished = threading.Event()

    def target() -> None:
        with _ONE_AT_A_TIME:
            try:
                outcome.reply = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome.error = exc
            finished.set()

    threading.Thread(target=target, name="securefed-paced-work", daemon=True).start()
    if finished.wait(timeout_s):
        outcome.done = True
        return outcome
    return Outcome(done=False)  # the worker's late result is never read


def runs_local_training(msg: Message) -> bool:
    """Whether answering ``msg`` runs the site's local training: a function of the message's
    public type and SecAgg+ stage only."""
    if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
        return False
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is None:  # plain FedAvg or BFV: the train message itself
        return True
    return str(configs.get(Key.STAGE, "")) == Stage.COLLECT_MASKED_VECTORS


# Stage requests whose work reads the site's cases (securefed.federation.site_stages,
# site_secure): the features release (extraction, protection), the assignment of its cases and a
# secure clustering round (its points). The key and summary stages do work of fixed size.
DATA_STAGES = frozenset({"features", "assign", "secure-assign", "secure-round"})


def reads_cases(msg: Message) -> bool:
    """Whether ``msg`` is a stage request (a query naming a stage) whose work reads the site's
    cases: public, from the message's type and the stage it names."""
    if msg.metadata.message_type != MessageTypeLegacy.GET_PROPERTIES or not msg.has_content():
        return False
    configs = msg.content.config_records.get("getpropertiesins.config")
    return configs is not None and str(configs.get("stage", "")) in DATA_STAGES


def scores_test_cases(msg: Message) -> bool:
    """Whether ``msg`` is the deployment's test request (an evaluate message naming the ``test``
    stage): the site scores its own test cases, work that grows with them. Public: the type and
    the stage the message names."""
    if msg.metadata.message_type != MessageType.EVALUATE or not msg.has_content():
        return False
    configs = msg.content.config_records.get("evaluateins.config")
    return configs is not None and str(configs.get("stage", "")) == "test"


def make_pacing_mod(
    pacing_of: Callable[[Context], Pacing],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    run: Runner = run_with_deadline,
) -> Mod:
    """A ClientApp mod that sends each local-training reply exactly one slot after its request,
    or, when the work has not finished by then, the ``slot-overrun`` code in its place (the late
    reply dropped); ``pacing_of`` reads the slot from the site's own protocol copy, never from
    the server's message. A reply that carries an error is paced like any other."""
    from securefed.federation.site_rules import ReplyCode, coded_error

    def pacing_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        training = runs_local_training(msg) or reads_cases(msg)
        if not (training or scores_test_cases(msg)):
            return call_next(msg, ctxt)
        pacing = pacing_of(ctxt)
        if pacing.slot_s <= 0 or not (training or pacing.scores_tests):
            return call_next(msg, ctxt)  # a test request the site answers without scoring
        start = clock()
        outcome = run(lambda: call_next(msg, ctxt), pacing.slot_s)
        if not outcome.done and pacing.on_overrun is not None:
            pacing.on_overrun()
        remaining = start + pacing.slot_s - clock()
        if remaining > 0:
            sleep(remaining)
        if not outcome.done:
            return coded_error(msg, ReplyCode.SLOT_OVERRUN)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.reply is not None
        return outcome.reply

    return pacing_mod
