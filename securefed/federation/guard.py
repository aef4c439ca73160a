"""The site boundary on the Flower side: a client mod that checks every outgoing reply against
what the site's own protocol declares (securefed.protocol.egress) and refuses anything else.

Allowed replies, by message type:
- train (fit): the model arrays, with the names, shapes and dtypes of the arrays the server sent
  (only the trained ones when ``training.trainable`` names a subset; under SecAgg+ they are
  cleared and Flower's SecAgg+ records carry the masked vector); the FedAvg
  weight (the train case count under a plain protocol, 1 otherwise); the metrics the policy allows
  (the mean train loss under a plain protocol, nothing otherwise); a success status;
- SecAgg+ protocol messages (keys, encrypted shares, masked vectors, unmasking shares) only when
  the protocol's aggregation is ``secagg+``, the setup reply with the site's signature over its
  public keys (securefed.federation.secagg_relay); a training reply under DP may quote the site's
  ledger head (securefed.federation.ledger_heads);
- under ``bfv`` the model travels as one uint8 array (the encrypted contribution, no larger than
  the model's encoding) and the decryptor's reply to a decrypt request is the decoded average
  only, with exactly the shapes and dtypes the request declares (securefed.federation.he_round);
- evaluate: under a plain protocol the validation count and mean Dice per region; otherwise a
  zero count and no metric;
- get_properties: partition id and protocol hash; get_parameters: the seeded initial model;
- the study's stages over the deployment (securefed.federation.site_stages): a features request
  is answered by the sealed feature envelope alone, an assign request by a bare acknowledgement;
  a test request (evaluate) by the validation reply's shape; the secure clustering's requests
  by one signed masking key, one masked vector, or a bare acknowledgement; the DP test summary's
  by its one masked vector of 7 values.
Anything else (another message type, an extra record, an undeclared metric, a weight that is not
the declared one) is refused: the site sends an error instead, logs the refusal and writes it to
its audit log. Tests: ``tests/federation/test_guard.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, MessageType
from flwr.common import MessageTypeLegacy

from securefed.errors import SecurefedError
from securefed.federation.flower_internals import RECORD_KEY_CONFIGS, ClientAppCallable
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.ledger_heads import LEDGER_HEAD_RECORD
from securefed.federation.secagg_relay import KEYSIG_RECORD
from securefed.protocol.egress import TrainingEgress

__all__ = [
    "GUARD_ERROR_CODE",
    "GuardPolicy",
    "check_reply",
    "make_egress_guard",
    "make_egress_record_mod",
    "reply_fields",
]

log = logging.getLogger("securefed.guard")

GUARD_ERROR_CODE = 4730  # securefed.federation.site_rules.ReplyCode.EGRESS_REFUSED
GUARD_ERROR_REASON = "egress-refused"
_SECAGG_KEYS = frozenset(v for k, v in vars(Key).items() if k.isupper())
_PLAIN_EVAL_METRICS = frozenset(
    {"partition-id", "num_val", "dice_tc", "dice_wt", "dice_et", "dice_mean"}
)
_STATUS = {"code": 0, "message": "Success"}


def _status_ok(content: Any, prefix: str) -> list[str]:
    status = content.config_records.get(f"{prefix}.status")
    if status is None or dict(status) != _STATUS:
        return [f"{prefix}.status is not a plain success"]
    return []


def _keys(records: Any) -> set[str]:
    return set(records.keys())


def _arrays_like(
    reply: Any, request: Any, name: str, positions: tuple[int, ...] | None = None
) -> list[str]:
    """The reply's arrays have the names, shapes and dtypes of the request's (``positions``:
    of those of the request's arrays only, in order)."""
    out = reply.array_records.get(name)
    sent = request.array_records.get("fitins.parameters")
    if out is None or sent is None:
        return [f"{name} missing"]
    if len(out) == 0:  # cleared by SecAgg+: the masked vector travels in its own record
        return []
    try:
        shapes = [(k, *_signature(a)) for k, a in out.items()]
        expected = [(k, *_signature(a)) for k, a in sent.items()]
        if positions is not None:
            values = list(sent.values())
            if positions and positions[-1] >= len(values):
                return [f"{name}: the request holds fewer arrays than the trained blocks"]
            expected = [(str(j), *_signature(values[i])) for j, i in enumerate(positions)]
    except ValueError:
        return [f"{name}: an array is not a plain numpy array"]
    return [] if shapes == expected else [f"{name}: arrays differ from the model sent"]


def _signature(array: Any) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of a Flower array; legacy parameters hold ``.npy`` bytes, whose header
    is read without loading the data (no pickle: object arrays are refused)."""
    if array.shape or array.dtype:
        return tuple(array.shape), str(array.dtype)
    import io

    from numpy.lib import format as npy

    buf = io.BytesIO(array.data)
    major, _ = npy.read_magic(buf)
    reader = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
    shape, _, dtype = reader(buf)  # header only
    if dtype.hasobject:
        raise ValueError("object array")
    return tuple(shape), dtype.str


def _ciphertext_like(reply: Any, request: Any) -> list[str]:
    """Under bfv: one uint8 vector no larger than the encoding of the model sent (one value per
    slot, the largest packing)."""
    from securefed.crypto.bfv import Encoding, contribution_bytes

    out = reply.array_records.get("fitres.parameters")
    sent = request.array_records.get("fitins.parameters")
    if out is None or sent is None or len(out) != 1:
        return ["fitres.parameters: expected one encrypted contribution"]
    try:
        ((_, array),) = out.items()
        shape, dtype = _signature(array)
        # + 1: a cluster reply under all-sites membership carries its case weight too
        n = sum(int(np.prod(_signature(a)[0])) for a in sent.values()) + 1
    except ValueError:
        return ["fitres.parameters: an array is not a plain numpy array"]
    if len(shape) != 1 or dtype not in ("uint8", "|u1"):
        return ["fitres.parameters: the encrypted contribution is not a byte vector"]
    bound = int(contribution_bytes(n, Encoding(clip=1.0, fields=1)) * 1.05) + 4096
    return [] if shape[0] <= bound else [f"fitres.parameters: {shape[0]} bytes, over {bound}"]


def _check_decrypt_reply(request: Any, content: Any, he: bool) -> list[str]:
    from securefed.federation.he_round import HE_MEAN, declared_shapes

    if not he:
        return ["a decrypt request under a protocol whose aggregation is not bfv"]
    if (
        _keys(content.array_records) != {HE_MEAN}
        or content.config_records
        or (content.metric_records)
    ):
        return ["a decrypt reply carries undeclared records"]
    try:
        expected = [(np.dtype(d).str, s) for d, s in declared_shapes(request)]
        got = [(np.dtype(_signature(a)[1]).str, _signature(a)[0])
               for a in content.array_records[HE_MEAN].values()]  # fmt: skip
    except (ValueError, TypeError, SecurefedError):
        return ["a decrypt reply whose arrays cannot be checked"]
    return [] if got == expected else ["a decrypt reply whose arrays are not the declared model"]


def _without_key_signature(
    content: Any, configs: set[str], problems: list[str]
) -> tuple[set[str], list[str]]:
    """A SecAgg+ setup reply may carry the site's signature over its fresh public keys."""
    if KEYSIG_RECORD not in configs:
        return configs, problems
    if Key.PUBLIC_KEY_1 not in content.config_records[RECORD_KEY_CONFIGS]:
        return configs, problems
    if set(content.config_records[KEYSIG_RECORD].keys()) != {"signed"}:
        problems = [*problems, "undeclared fields beside the SecAgg+ key signature"]
    return configs - {KEYSIG_RECORD}, problems


def _without_ledger_head(
    content: Any, configs: set[str], problems: list[str]
) -> tuple[set[str], list[str]]:
    """A training reply under DP may quote the site's ledger head (entries, head, signature)."""
    if LEDGER_HEAD_RECORD not in configs:
        return configs, problems
    if not set(content.config_records[LEDGER_HEAD_RECORD].keys()) <= {"entries", "head", "signed"}:
        problems = [*problems, "undeclared fields beside the ledger head"]
    return configs - {LEDGER_HEAD_RECORD}, problems


def _check_train(
    request: Any,
    content: Any,
    egress: TrainingEgress,
    secagg: bool,
    he: bool = False,
    sent_arrays: tuple[int, ...] | None = None,
) -> list[str]:
    from securefed.federation.he_round import HE_RECORD

    if HE_RECORD in request.config_records:
        return _check_decrypt_reply(request, content, he)
    problems: list[str] = []
    configs = _keys(content.config_records)
    if secagg and RECORD_KEY_CONFIGS not in configs:
        return ["a clear train reply under a secagg+ protocol (only SecAgg+ stages are answered)"]
    if RECORD_KEY_CONFIGS in configs:
        if not secagg:
            return ["a SecAgg+ message under a protocol whose aggregation is not secagg+"]
        extra = set(content.config_records[RECORD_KEY_CONFIGS].keys()) - _SECAGG_KEYS
        if extra:
            problems.append(f"undeclared SecAgg+ fields {sorted(extra)}")
        configs -= {RECORD_KEY_CONFIGS}
        configs, problems = _without_key_signature(content, configs, problems)
        if not configs and not content.array_records and not content.metric_records:
            return problems  # a SecAgg+ key-exchange or unmasking message
    configs, problems = _without_ledger_head(content, configs, problems)
    if configs != {"fitres.metrics", "fitres.status"}:
        problems.append(f"undeclared records {sorted(configs)}")
    if _keys(content.array_records) != {"fitres.parameters"}:
        problems.append("undeclared array records")
    if _keys(content.metric_records) != {"fitres.num_examples"}:
        problems.append("undeclared metric records")
    if he:
        problems += _ciphertext_like(content, request)
    elif secagg:
        if any(len(a) for a in content.array_records.values()):
            problems.append("model arrays beside the masked vector under secagg+")
    else:
        problems += _arrays_like(content, request, "fitres.parameters", sent_arrays)
    metrics = set(content.config_records.get("fitres.metrics", {}).keys())
    allowed = {"loss"} if egress.train_loss else set()
    if metrics - allowed:
        problems.append(f"train metrics {sorted(metrics - allowed)} are not declared")
    weight = content.metric_records.get("fitres.num_examples", {}).get("num_examples")
    if egress.weights == "uniform" and weight != 1:
        problems.append(f"FedAvg weight {weight} where the protocol declares 1")
    return problems + _status_ok(content, "fitres")


def _check_evaluate(content: Any, egress: TrainingEgress) -> list[str]:
    problems: list[str] = []
    if _keys(content.config_records) != {"evaluateres.metrics", "evaluateres.status"}:
        problems.append("undeclared records")
    if _keys(content.metric_records) != {"evaluateres.loss", "evaluateres.num_examples"}:
        problems.append("undeclared metric records")
    if content.array_records:
        problems.append("arrays in an evaluation reply")
    metrics = set(content.config_records.get("evaluateres.metrics", {}).keys())
    allowed = _PLAIN_EVAL_METRICS if egress.validation else {"partition-id"}
    if metrics - allowed:
        problems.append(f"validation metrics {sorted(metrics - allowed)} are not declared")
    if not egress.validation:
        n = content.metric_records.get("evaluateres.num_examples", {}).get("num_examples")
        loss = content.metric_records.get("evaluateres.loss", {}).get("loss")
        if n != 0 or loss != 0.0:
            problems.append("a validation count or loss where the protocol declares none")
    return problems + _status_ok(content, "evaluateres")


def _check_stage_reply(stage: str, props: Any) -> list[str]:
    """A stage reply (securefed.federation.site_stages): the features stage's sealed envelope
    alone, or the assign stage's acknowledgement alone."""
    if stage == "features":
        value = props.get("envelope")
        ok = set(props.keys()) == {"envelope"} and isinstance(value, bytes) and len(value) > 0
        return [] if ok else ["a features reply is not one sealed envelope"]
    if stage in ("assign", "secure-assign"):
        ok = set(props.keys()) == {"assigned"} and props.get("assigned") is True
        return [] if ok else ["an assign reply is not a bare acknowledgement"]
    if stage == "secure-keys":  # the site's masking key and its signature (securefed.crypto)
        signed = props.get("signed")
        key = props.get("masking-key")
        ok = (set(props.keys()) == {"masking-key", "signed"} and isinstance(key, bytes)
              and len(key) == 32 and isinstance(signed, bytes) and len(signed) < 512)  # fmt: skip
        return [] if ok else ["a secure-keys reply is not one signed public key"]
    if stage == "secure-round":  # one masked uint64 vector
        masked = props.get("masked")
        ok = set(props.keys()) == {"masked"} and isinstance(masked, bytes) and len(masked) % 8 == 0
        return [] if ok else ["a secure-round reply is not one masked vector"]
    if stage == "dp-test":  # the test summary's masked vector (securefed.privacy.test_summary)
        from securefed.privacy.test_summary import LENGTH

        masked = props.get("masked")
        ok = (set(props.keys()) == {"masked"} and isinstance(masked, bytes)
              and len(masked) == 8 * LENGTH)  # fmt: skip
        return [] if ok else ["a dp-test reply is not the summary's one masked vector"]
    return [f"stage {stage!r} has no declared reply"]


def check_reply(
    request: Message,
    reply: Message,
    egress: TrainingEgress,
    *,
    secagg: bool,
    he: bool = False,
    sent_arrays: tuple[int, ...] | None = None,
) -> list[str]:
    """What in ``reply`` (to ``request``) the site's protocol does not declare (empty: none).
    ``sent_arrays``: a train reply holds only those of the request's arrays (the trained ones)."""
    kind = request.metadata.message_type
    content = reply.content
    if kind == MessageType.TRAIN:
        return _check_train(request.content, content, egress, secagg, he, sent_arrays)
    if kind == MessageType.EVALUATE:
        return _check_evaluate(content, egress)
    if kind == MessageTypeLegacy.GET_PROPERTIES:
        props: Any = content.config_records.get("getpropertiesres.properties", {})
        asked: Any = request.content.config_records.get("getpropertiesins.config", {})
        stage = asked.get("stage")
        if stage is not None:
            problems = _check_stage_reply(str(stage), props)
        else:
            extra = set(props.keys()) - {"partition-id", "protocol-hash", "budget-ok"}
            problems = [f"undeclared properties {sorted(extra)}"] if extra else []
        if _keys(content.config_records) != {"getpropertiesres.properties",
                                             "getpropertiesres.status"}:  # fmt: skip
            problems.append("undeclared records")
        return problems
    if kind == MessageTypeLegacy.GET_PARAMETERS:
        ok = _keys(content.array_records) == {"getparametersres.parameters"} and _keys(
            content.config_records) == {"getparametersres.status"}  # fmt: skip
        return [] if ok and not content.metric_records else ["undeclared records"]
    return [f"message type {kind!r} is not part of the protocol"]


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard needs of the site: its egress policy, whether its protocol uses SecAgg+,
    a callback recording a refusal (the audit log), one recording what left (the egress
    log: the request it answers, the reply's fields) and whether it aggregates under BFV."""

    egress: TrainingEgress
    secagg: bool
    on_refused: Callable[[str], None]
    on_sent: Callable[[Message, list[dict[str, Any]]], None] | None = None
    he: bool = False
    sent_arrays: tuple[int, ...] | None = None  # the trained arrays only (training.trainable)


def reply_fields(reply: Message) -> list[dict[str, Any]]:
    """Every field of a reply as the egress log records it (arrays and bytes by digest)."""
    from securefed.trust.egress_log import describe_value

    content = reply.content
    out: list[dict[str, Any]] = []
    for aname, arrays in sorted(content.array_records.items()):
        out += [describe_value(f"{aname}.{k}", a.numpy()) for k, a in arrays.items()]
    for mname, metrics in sorted(content.metric_records.items()):
        out += [describe_value(f"{mname}.{k}", v) for k, v in sorted(metrics.items())]
    for cname, configs in sorted(content.config_records.items()):
        out += [describe_value(f"{cname}.{k}", v) for k, v in sorted(configs.items())]
    return out


def make_egress_record_mod(
    record: Callable[[Context, Message, list[dict[str, Any]]], None],
) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """The outermost client mod: writes to the site's egress log what actually leaves, after
    the pacing hold (an entry's time then says when the reply left, never when the work ended);
    an error reply as its code only."""

    def egress_record_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, ctxt)
        if reply.has_error():
            fields = [{"name": "error.code", "type": "int", "value": int(reply.error.code)}]
        else:
            fields = reply_fields(reply)
        record(ctxt, msg, fields)
        return reply

    return egress_record_mod


def make_egress_guard(
    resolve: Callable[[Context], GuardPolicy],
) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """The outermost client mod. ``resolve(context)`` gives the site's GuardPolicy."""

    def egress_guard_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        policy = resolve(ctxt)
        problems = check_reply(msg, reply, policy.egress, secagg=policy.secagg, he=policy.he,
                               sent_arrays=policy.sent_arrays)  # fmt: skip
        if not problems:
            if policy.on_sent is not None:
                policy.on_sent(msg, reply_fields(reply))
            return reply
        reason = "; ".join(problems)
        # The detail (which may quote a count) stays in the site's local log; the reply carries
        # the fixed code only.
        log.error("refused to send a %s reply: %s", msg.metadata.message_type, reason)
        policy.on_refused(str(msg.metadata.message_type))
        return Message(Error(GUARD_ERROR_CODE, GUARD_ERROR_REASON), reply_to=msg)

    return egress_guard_mod
