"""The egress guard (governance issue, part 2): every reply a site's Flower client sends is
checked against what its protocol declares; undeclared content is refused before it leaves."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Message, MessageType, Metadata, RecordDict
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    MessageTypeLegacy,
    Status,
    ndarrays_to_parameters,
)

from securefed.federation.flower_internals import RECORD_KEY_CONFIGS
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import recorddict_compat as compat
from securefed.federation.guard import (
    GUARD_ERROR_CODE,
    GuardPolicy,
    check_reply,
    make_egress_guard,
)
from securefed.protocol.egress import TrainingEgress

PLAIN = TrainingEgress("train-counts", True, True, "raw")
DP = TrainingEgress("uniform", False, False, "released")
OK = Status(Code.OK, "Success")
MODEL = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]


def _request(kind: str, content: RecordDict) -> Message:
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=1,
                    reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type=kind)  # fmt: skip
    return Message(metadata=meta, content=content)


def _fit(weights=MODEL, n=1, metrics=None) -> tuple[Message, Message]:  # noqa: ANN001
    ins = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(MODEL), {}), True)
    request = _request(MessageType.TRAIN, ins)
    res = FitRes(OK, ndarrays_to_parameters(weights), n, metrics or {})
    return request, Message(compat.fitres_to_recorddict(res, True), reply_to=request)


def _evaluate(n: int, metrics: dict) -> tuple[Message, Message]:
    ins = compat.evaluateins_to_recorddict(EvaluateIns(ndarrays_to_parameters(MODEL), {}), True)
    request = _request(MessageType.EVALUATE, ins)
    res = EvaluateRes(OK, 0.0 if n == 0 else 0.3, n, metrics)
    return request, Message(compat.evaluateres_to_recorddict(res), reply_to=request)


def _masked(pair: tuple[Message, Message]) -> tuple[Message, Message]:
    """The reply as Flower's secaggplus_mod sends it at the masked-vector stage: the fit
    records with their arrays cleared, plus the masked vector in the SecAgg+ record."""
    from flwr.app import ConfigRecord

    request, reply = pair
    for arrays in reply.content.array_records.values():
        arrays.clear()
    reply.content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({Key.MASKED_PARAMETERS: [b"x"]})
    return request, reply


def test_declared_replies_pass() -> None:
    assert check_reply(*_fit(n=3, metrics={"loss": 0.5}), PLAIN, secagg=False) == []
    assert check_reply(*_masked(_fit(n=3, metrics={"loss": 0.5})), PLAIN, secagg=True) == []
    assert check_reply(*_masked(_fit(n=1)), DP, secagg=True) == []
    plain_eval = {"partition-id": 1, "num_val": 2.0, "dice_tc": 0.5, "dice_wt": 0.5,
                  "dice_et": 0.5, "dice_mean": 0.5}  # fmt: skip
    assert check_reply(*_evaluate(2, plain_eval), PLAIN, secagg=True) == []
    assert check_reply(*_evaluate(0, {"partition-id": 1}), DP, secagg=True) == []
    ins = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
    request = _request(MessageTypeLegacy.GET_PROPERTIES, ins)
    res = GetPropertiesRes(OK, {"partition-id": 1, "protocol-hash": "sha256:x"})
    reply = Message(compat.getpropertiesres_to_recorddict(res), reply_to=request)
    assert check_reply(request, reply, DP, secagg=True) == []


@pytest.mark.parametrize(
    ("reply", "egress", "needle"),
    [
        (_fit(n=3), DP, "FedAvg weight 3 where the protocol declares 1"),
        (_fit(n=1, metrics={"loss": 0.5}), DP, "train metrics ['loss'] are not declared"),
        (_fit(n=2, metrics={"dice": 0.9}), PLAIN, "train metrics ['dice'] are not declared"),
        (_fit(weights=[np.zeros((3, 3), np.float32), np.ones(4, np.float32)]), DP,
         "arrays differ from the model sent"),
        (_evaluate(2, {"partition-id": 1, "dice_mean": 0.8}), DP,
         "validation metrics ['dice_mean'] are not declared"),
        (_evaluate(2, {"partition-id": 1}), DP, "a validation count or loss"),
    ],
)  # fmt: skip
def test_undeclared_content_is_named(reply, egress, needle) -> None:  # noqa: ANN001
    problems = check_reply(*reply, egress, secagg=False)
    assert any(needle in p for p in problems), problems


def test_a_clear_train_reply_is_refused_under_secagg() -> None:
    """Hostile coordinator, item 1 of the review: a plain train message under a secagg+
    protocol used to return the site's weights in clear; now only SecAgg+ stages pass."""
    problems = check_reply(*_fit(n=1), DP, secagg=True)
    assert problems
    assert "clear train reply" in problems[0]
    request, reply = _masked(_fit(n=1))
    reply.content.array_records["fitres.parameters"] = _fit(n=1)[1].content.array_records[
        "fitres.parameters"
    ]
    assert any("beside the masked vector" in p for p in check_reply(request, reply, DP,
                                                                    secagg=True))  # fmt: skip


def test_secagg_messages_only_under_secagg_and_unknown_types_refused() -> None:
    request = _request(MessageType.TRAIN, RecordDict())
    content = RecordDict()
    from flwr.app import ConfigRecord

    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({"pk1": b"x", "pk2": b"y"})
    reply = Message(content, reply_to=request)
    assert check_reply(request, reply, DP, secagg=True) == []
    assert "not secagg+" in check_reply(request, reply, DP, secagg=False)[0]
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({"pk1": b"x", "dice": 0.9})
    assert "undeclared SecAgg+ fields ['dice']" in check_reply(request, reply, DP, secagg=True)[0]
    query = _request(MessageType.QUERY, RecordDict())
    assert (
        "not part of the protocol"
        in check_reply(query, Message(RecordDict(), reply_to=query), DP, secagg=True)[0]
    )


def test_the_mod_replaces_a_refused_reply_by_an_error_and_records_it() -> None:
    refused: list[str] = []
    guard = make_egress_guard(lambda ctxt: GuardPolicy(DP, False, refused.append))
    request, reply = _fit(n=5)
    out = guard(request, None, lambda m, c: reply)  # type: ignore[arg-type]
    assert out.has_error()
    assert out.error.code == GUARD_ERROR_CODE
    # The reply carries a fixed reason, never the detail (it would quote the count 5).
    assert out.error.reason == "egress-refused"
    assert refused == [MessageType.TRAIN]
    request, good = _fit(n=1)
    assert guard(request, None, lambda m, c: good) is good  # type: ignore[arg-type]


def _decrypt(arrays: list[np.ndarray]) -> tuple[Message, Message]:
    from flwr.app import ArrayRecord

    from securefed.federation.he_round import HE_MEAN, decrypt_request

    content = decrypt_request(b"\x00" * 64, phase="global", rnd=1, sites=[1, 2], fields=2,
                              shapes=[(a.dtype.str, a.shape) for a in MODEL],
                              protocol_hash="sha256:x")  # fmt: skip
    request = _request(MessageType.TRAIN, content)
    return request, Message(RecordDict({HE_MEAN: ArrayRecord(arrays)}), reply_to=request)


def test_bfv_replies_are_one_byte_vector_and_the_declared_average() -> None:
    blob = np.zeros(200_000, np.uint8)
    assert check_reply(*_fit(weights=[blob], n=1), DP, secagg=False, he=True) == []
    # the model in clear under bfv, two vectors, another dtype, an oversized "ciphertext"
    for bad in ([*MODEL], [blob, blob], [blob.astype(np.int16)], [np.zeros(10**7, np.uint8)]):
        assert check_reply(*_fit(weights=bad, n=1), DP, secagg=False, he=True)
    # the decryptor sends the decoded average with the declared shapes, nothing else
    assert check_reply(*_decrypt(MODEL), DP, secagg=False, he=True) == []
    assert check_reply(*_decrypt(MODEL[:1]), DP, secagg=False, he=True)
    assert check_reply(*_decrypt([m.astype(np.float64) for m in MODEL]), DP, secagg=False,
                       he=True)  # fmt: skip
    # a decrypt request under a protocol that does not aggregate with bfv gets no reply
    assert check_reply(*_decrypt(MODEL), DP, secagg=True, he=False)


def test_a_reply_of_the_trained_arrays_only_passes_and_nothing_else_does() -> None:
    """training.trainable: a train reply holds exactly the trained arrays (here the second),
    with their shapes; the whole model, another array or another shape is refused."""
    trained = (1,)
    assert check_reply(*_fit(weights=[MODEL[1]]), DP, secagg=False, sent_arrays=trained) == []
    for weights in (MODEL, [MODEL[0]], [np.ones(5, np.float32)]):
        problems = check_reply(*_fit(weights=weights), DP, secagg=False, sent_arrays=trained)
        assert problems == ["fitres.parameters: arrays differ from the model sent"], weights
    out_of_range = check_reply(*_fit(weights=[MODEL[1]]), DP, secagg=False, sent_arrays=(5,))
    assert out_of_range
    assert "fewer arrays" in out_of_range[0]
