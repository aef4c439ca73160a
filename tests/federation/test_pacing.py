"""Reply pacing (securefed.federation.pacing): training replies leave on the protocol's time grid,
whatever the work took; only local-training messages are paced; overruns are recorded; a
deployment protocol that claims a finite epsilon must pace."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, MessageType, Metadata, RecordDict
from flwr.common import MessageTypeLegacy

from securefed.errors import ProtocolError
from securefed.federation.client_app import make_client_app
from securefed.federation.flower_internals import RECORD_KEY_CONFIGS
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import SecAggPlusStage as Stage
from securefed.federation.pacing import (
    Outcome,
    Pacing,
    make_pacing_mod,
    run_with_deadline,
    runs_local_training,
)
from securefed.federation.site_rules import ReplyCode
from securefed.protocol import parse_protocol

ROOT = Path(__file__).resolve().parents[2]
FP = "sha256:" + "ab" * 32


class FakeClock:
    """A monotonic clock that only moves when work or sleep moves it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def _message(kind: str, stage: str | None = None) -> Message:
    content = RecordDict()
    if stage is not None:
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({Key.STAGE: stage})
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type=kind)  # fmt: skip
    return Message(metadata=meta, content=content)


def _work(clock: FakeClock, seconds: float) -> Callable[[Message, object], Message]:
    def call_next(msg: Message, ctxt: object) -> Message:
        clock.now += seconds
        return Message(RecordDict(), reply_to=msg)

    return call_next


def _fake_run(clock: FakeClock):  # noqa: ANN202
    """The worker thread on the fake clock: the mod regains control at the deadline."""

    def run(work: Callable[[], Message], timeout: float) -> Outcome:
        start = clock.now
        try:
            reply, error = work(), None
        except RuntimeError as exc:
            reply, error = None, exc
        if clock.now - start > timeout:
            clock.now = start + timeout
            return Outcome(done=False)
        return Outcome(done=True, reply=reply, error=error)

    return run


def _paced(clock: FakeClock, slot: float, overruns: list[int] | None = None):  # noqa: ANN202
    record = (lambda: overruns.append(1)) if overruns is not None else None
    pacing = Pacing(slot, record)
    return make_pacing_mod(lambda ctxt: pacing, clock=clock, sleep=clock.sleep,
                           run=_fake_run(clock))  # fmt: skip


@pytest.mark.parametrize("work_s", [0.0, 0.1, 3.0, 9.99])
def test_replies_leave_at_the_slot_whatever_the_work_took(work_s: float) -> None:
    clock = FakeClock()
    mod = _paced(clock, 10.0)
    start = clock.now
    reply = mod(_message(MessageType.TRAIN), None, _work(clock, work_s))  # type: ignore[arg-type]
    assert not reply.has_error()
    assert clock.now == pytest.approx(start + 10.0)  # the same for every site and every data set


@pytest.mark.parametrize("work_s", [10.5, 12.0, 95.0])
def test_an_overrun_reply_is_dropped_at_the_slot_and_recorded(work_s: float) -> None:
    """Every accepted epsilon, bug 4: an overrun used to leave at the next slot boundary, so its
    slot count (a function of the data) reached the server. Now the reply leaves at the slot as
    the fixed slot-overrun code whatever the work took, and the late reply is dropped."""
    clock, overruns = FakeClock(), []
    mod = _paced(clock, 10.0, overruns)
    start = clock.now
    msg = _message(MessageType.TRAIN, Stage.COLLECT_MASKED_VECTORS)
    reply = mod(msg, None, _work(clock, work_s))  # type: ignore[arg-type]
    assert clock.now == pytest.approx(start + 10.0)
    assert overruns == [1]
    assert reply.has_error()
    assert reply.error.code == int(ReplyCode.SLOT_OVERRUN)
    assert reply.error.reason == "slot-overrun"


def test_the_worker_thread_drops_a_late_reply_and_trains_one_piece_at_a_time() -> None:
    """The real runner: work still blocked at the deadline is dropped (the mod returns without
    it); the next message's work starts only once the dropped one has ended."""
    import threading

    gate, order = threading.Event(), []

    def blocked() -> Message:
        gate.wait(30)
        order.append("first")
        return Message(RecordDict(), reply_to=_message(MessageType.TRAIN))

    assert run_with_deadline(blocked, 0.01).done is False
    second = threading.Thread(target=lambda: run_with_deadline(
        lambda: order.append("second") or Message(RecordDict(), reply_to=_message(
            MessageType.TRAIN)), 30))  # fmt: skip
    second.start()
    gate.set()
    second.join(30)
    assert order == ["first", "second"]
    done = run_with_deadline(lambda: Message(RecordDict(), reply_to=_message(MessageType.TRAIN)),
                             30)  # fmt: skip
    assert done.done
    assert done.reply is not None


def test_an_error_reply_is_paced_too() -> None:
    clock = FakeClock()
    mod = _paced(clock, 5.0)
    start = clock.now

    def failing(msg: Message, ctxt: object) -> Message:
        clock.now += 1.0
        raise RuntimeError("budget exceeded")

    with pytest.raises(RuntimeError, match="budget exceeded"):
        mod(_message(MessageType.TRAIN), None, failing)  # type: ignore[arg-type]
    assert clock.now == pytest.approx(start + 5.0)


@pytest.mark.parametrize(
    ("kind", "stage", "paced"),
    [(MessageType.TRAIN, None, True), (MessageType.TRAIN, Stage.COLLECT_MASKED_VECTORS, True),
     (MessageType.TRAIN, Stage.SETUP, False), (MessageType.TRAIN, Stage.SHARE_KEYS, False),
     (MessageType.TRAIN, Stage.UNMASK, False), (MessageType.EVALUATE, None, False),
     (MessageType.QUERY, None, False)],
)  # fmt: skip
def test_only_messages_that_run_local_training_are_paced(
    kind: str, stage: str | None, paced: bool
) -> None:
    msg = _message(kind, stage)
    assert runs_local_training(msg) is paced
    clock = FakeClock()
    start = clock.now
    _paced(clock, 10.0)(msg, None, _work(clock, 1.0))  # type: ignore[arg-type]
    assert clock.now == pytest.approx(start + (10.0 if paced else 1.0))
    clock = FakeClock()  # slot 0: never paced
    _paced(clock, 0.0)(msg, None, _work(clock, 1.0))  # type: ignore[arg-type]
    assert clock.sleeps == []


def test_the_site_app_paces_outermost_from_its_own_protocol_copy() -> None:
    """Outside pacing only the egress log's writer, so each entry is written after the hold."""
    app = make_client_app()
    mods = app._mods  # noqa: SLF001 - the order of the mods is the property under test
    assert [m.__name__ for m in mods[:2]] == ["egress_record_mod", "pacing_mod"]


def _demo() -> dict:
    return tomllib.loads((ROOT / "protocols" / "demo.toml").read_text())


def _deployment(data: dict) -> dict:
    data["study"]["mode"] = "deployment"
    data["sites"] = [
        {"id": f"h{i}", "partition_id": i, "signing_key": FP, "encryption_key": FP}
        for i in range(1, 4)
    ]
    data["server"] = {"id": "server", "signing_key": FP, "encryption_key": FP}
    data["governance"] = {"signing_key": FP}
    return data


def test_a_finite_epsilon_deployment_needs_exact_dpsgd_noise_and_paced_replies() -> None:
    data = _deployment(_demo())
    assert parse_protocol(data).training.reply_slot_s == 0  # plain: epsilon inf, not required
    data["training"]["dp_sgd"] = {"enabled": True, "epsilon": 2.0}
    data["training"]["baselines"] = ["local", "fedavg"]
    with pytest.raises(ProtocolError, match="needs noise = 'discrete-gaussian'"):
        parse_protocol(data)  # float DP-SGD noise is not claimed outside simulation
    data["training"]["dp_sgd"].update(noise="discrete-gaussian", amplification="none")
    with pytest.raises(ProtocolError, match="must pace training replies"):
        parse_protocol(data)
    data["training"]["reply_slot_s"] = 30.0
    assert parse_protocol(data).training.reply_slot_s == 30.0
    data["secure_aggregation"]["timeout_s"] = 30.0
    with pytest.raises(ProtocolError, match=r"reply_slot_s: 30 s is not below"):
        parse_protocol(data)


def test_a_real_secagg_round_paces_from_the_site_protocol_and_records_overruns(
    tmp_path: Path,
) -> None:
    """Flower's simulation engine, SecAgg+: with a slot far below the work every site's masked
    vector overruns and is dropped (the slot-overrun code leaves in its place, at the slot), so
    the round has no aggregate; each site's own audit log says so (the pacing reads the site's
    copy) and its egress log shows the code, written after the hold."""
    from support.flower import make_task, write_assignments, write_protocol

    from securefed.errors import TooFewParticipantsError
    from securefed.federation.config import SiteSettings
    from securefed.federation.phase import phase_config, run_phase
    from securefed.protocol import load_protocol
    from securefed.trust.audit_log import AUDIT_FILE
    from securefed.trust.egress_log import EGRESS_FILE

    proto = write_protocol(tmp_path, aggregation="secagg+", rounds=1, finetune=1, timeout=5)
    text = proto.read_text().replace("[training]\n", "[training]\nreply_slot_s = 0.001\n")
    proto.write_text(text)
    layout = {p: [("train", 0)] * 2 + [("val", 0)] for p in (1, 2, 3)}
    asg = write_assignments(tmp_path / "clusters.csv", layout)
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(proto),
                          assignments=str(asg), work_dir=str(tmp_path / f"site-{p}"))
             for p in layout]  # fmt: skip
    loaded = load_protocol(proto)
    assert loaded.protocol.training.reply_slot_s == 0.001
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites={1: 2, 2: 2, 3: 2},
                       assignments=asg)  # fmt: skip
    with pytest.raises(TooFewParticipantsError):
        run_phase(cfg, sites, task=make_task())
    for p in layout:
        lines = (tmp_path / f"site-{p}" / AUDIT_FILE).read_text().splitlines()
        overruns = [line for line in lines if '"reply-slot-overrun"' in line]
        assert len(overruns) == 1, lines  # the collect_masked_vectors reply only
        assert '"phase":"global"' in overruns[0].replace(" ", "")
        assert '"slots"' not in overruns[0]  # nothing of how long the work took
        egress = (tmp_path / f"site-{p}" / EGRESS_FILE).read_text()
        assert '"value": 4736' in egress or '"value":4736' in egress


@pytest.mark.parametrize(("scores", "work_s", "paced"),
                         [(True, 0.5, True), (True, 7.0, True), (False, 0.5, False)])  # fmt: skip
def test_a_test_request_is_paced_where_the_site_scores_its_cases(
    scores: bool, work_s: float, paced: bool
) -> None:
    """Under evaluation.dp_summary a site scores its test cases on the deployment's test request
    (work that grows with them) and sends no metric: the reply leaves at the slot. Without the
    summary it answers without that work, unpaced; a validation request is never held."""
    clock = FakeClock()
    pacing = Pacing(10.0, None, scores_tests=scores)
    mod = make_pacing_mod(lambda ctxt: pacing, clock=clock, sleep=clock.sleep,
                          run=_fake_run(clock))  # fmt: skip
    msg = _message(MessageType.EVALUATE)
    msg.content.config_records["evaluateins.config"] = ConfigRecord({"stage": "test"})
    start = clock.now
    mod(msg, None, _work(clock, work_s))  # type: ignore[arg-type]
    assert clock.now == pytest.approx(start + (10.0 if paced else work_s))
    start = clock.now
    validation = _message(MessageType.EVALUATE)
    validation.content.config_records["evaluateins.config"] = ConfigRecord({"server-round": 3})
    mod(validation, None, _work(clock, work_s))  # type: ignore[arg-type]
    assert clock.now == pytest.approx(start + work_s)


@pytest.mark.parametrize(
    ("stage", "paced"),
    [("features", True), ("assign", True), ("secure-round", True), ("secure-assign", True),
     ("secure-keys", False), ("dp-test", False)],
)  # fmt: skip
def test_a_stage_request_that_reads_cases_is_paced(stage: str, paced: bool) -> None:
    """Over a deployment a stage request whose work reads the site's cases (the features
    release, the assignment, a secure clustering round) leaves at the slot like a training reply;
    the masking-key and summary stages do work of fixed size and leave when ready."""
    clock = FakeClock()
    mod = _paced(clock, 10.0)
    msg = _message(MessageTypeLegacy.GET_PROPERTIES)
    msg.content.config_records["getpropertiesins.config"] = ConfigRecord({"stage": stage})
    start = clock.now
    mod(msg, None, _work(clock, 2.5))  # type: ignore[arg-type]
    assert clock.now == pytest.approx(start + (10.0 if paced else 2.5))
