"""The site's rules for the coordinator's messages: the site obeys its own accepted protocol, never
a value in the coordinator's message.

Three client mods and one check, each refusing before any data is touched:

- :func:`check_round_config`: a train or evaluate message carries coordinates only (protocol
  hash, phase, cluster, round: :data:`COORDINATES`), within the protocol's plan; any other value
  (a learning rate, local epochs or steps, a seed) is refused
  (:class:`~securefed.errors.InstructionRefusedError`). The site derives its work from its own
  accepted protocol.
- :func:`make_secaggplus_site_mod`: under ``training.aggregation = "secagg+"`` a train message
  must run Flower's SecAgg+ (a clear train request is refused before training, and the egress
  guard refuses a clear train reply); the SecAgg+ setup must carry the protocol's shares,
  threshold, clipping, quantisation and modulus ranges and at least ``min_sites_per_aggregate``
  sampled sites; the neighbour set must hold the site itself and at least
  ``min_sites_per_aggregate`` distinct keys; an unmask request must list the site as active,
  keep its active and dead lists disjoint and the active ones within the neighbour set (a dead
  node it never exchanged keys with is dropped from the request), and may come once. Under
  any other aggregation a SecAgg+ message is refused. When the protocol pins the sites' signing
  keys (every deployment protocol), the site signs its SecAgg+ public keys with its own pinned key
  and accepts a neighbour set only when every neighbour's keys are signed by a distinct pinned
  site of the protocol (securefed.crypto.secagg_keys): the coordinator cannot make up neighbours.
- :func:`make_error_code_mod`: whatever fails inside the site leaves as an error reply with a
  code of the closed list :class:`ReplyCode` and a fixed reason (its name), never exception
  text; the detail stays in the site's audit log.

What leaves a site here: the code of a refusal (one of seven values) and, in a SecAgg+ setup
reply, the site's signature over its fresh public keys.
Tests: ``tests/adversary/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from flwr.app import Context, Error, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import ConfigRecord

from securefed.crypto import PrivateKeys
from securefed.crypto.secagg_keys import (
    KeySignatureError,
    SignedKeys,
    sign_secagg_keys,
    verify_secagg_keys,
)
from securefed.errors import (
    BudgetExceededError,
    InstructionRefusedError,
    ProtocolSignatureError,
    SiteTrustError,
    WrongProtocolError,
)
from securefed.federation.flower_internals import RECORD_KEY_CONFIGS, ClientAppCallable, Mod
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import SecAggPlusStage as Stage
from securefed.federation.secagg_relay import KEYSIG_RECORD, KEYSIGS_RECORD
from securefed.protocol import Protocol
from securefed.trust.site_key import pinned_site_keys

__all__ = [
    "COORDINATES",
    "STAGE_KEYS",
    "ReplyCode",
    "SecAggSite",
    "check_round_config",
    "check_stage_config",
    "code_for",
    "coded_error",
    "make_error_code_mod",
    "make_secaggplus_site_mod",
    "secaggplus_expected",
]

log = logging.getLogger("securefed.site_rules")

_MOD_RANGE = 2**32  # Flower's SecAgg+ modulus (SecAggPlusWorkflow's default, never changed here)
_STATE = "securefed.secaggplus"


@dataclass(frozen=True)
class SecAggSite:
    """What the SecAgg+ checks need of the site: its accepted protocol (and hash), its site id
    and its signing key (None where the protocol pins no site key)."""

    protocol: Protocol
    sha256: str
    site_id: str
    key: PrivateKeys | None


class ReplyCode(IntEnum):
    """The closed list of error codes a site answers with (reason: the lower-case name)."""

    EGRESS_REFUSED = 4730  # the egress guard refused the reply (securefed.federation.guard)
    WRONG_PROTOCOL = 4731  # the message names another protocol than the site accepted
    INSTRUCTION_REFUSED = 4732  # a value in the message disagrees with the site's protocol
    BUDGET_EXHAUSTED = 4733  # the site's ledger cannot pay this round
    TRUST_REFUSED = 4734  # the site's trust or policy refuses its protocol copy
    SITE_FAILURE = 4735  # anything else (the detail stays in the site's log)
    SLOT_OVERRUN = 4736  # local training did not fit training.reply_slot_s: the reply dropped

    @property
    def reason(self) -> str:
        return self.name.lower().replace("_", "-")


def code_for(exc: BaseException) -> ReplyCode:
    """The reply code of an exception raised while answering a message."""
    if isinstance(exc, WrongProtocolError):
        return ReplyCode.WRONG_PROTOCOL
    if isinstance(exc, InstructionRefusedError):
        return ReplyCode.INSTRUCTION_REFUSED
    if isinstance(exc, BudgetExceededError):
        return ReplyCode.BUDGET_EXHAUSTED
    if isinstance(exc, SiteTrustError | ProtocolSignatureError):
        return ReplyCode.TRUST_REFUSED
    return ReplyCode.SITE_FAILURE


def coded_error(msg: Message, code: ReplyCode) -> Message:
    """The error reply of ``code`` to ``msg``: a fixed reason, nothing about the cause."""
    return Message(Error(int(code), code.reason), reply_to=msg)


def make_error_code_mod(on_error: Callable[[Context, Message, ReplyCode, str], None]) -> Mod:
    """A mod that turns every failure inside it into an error reply of the closed list.
    ``on_error(context, request, code, detail)`` records the detail at the site (audit log)."""
    known = {int(c): c for c in ReplyCode}

    def error_code_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        try:
            reply = call_next(msg, ctxt)
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a code
            code = code_for(exc)
            detail = f"{type(exc).__name__}: {exc}"
            log.error("site refused or failed a %s message: %s", msg.metadata.message_type, detail)
            on_error(ctxt, msg, code, detail)
            return coded_error(msg, code)
        if not reply.has_error():
            return reply
        got = known.get(int(reply.error.code))
        if got is not None and reply.error.reason == got.reason:
            return reply
        detail = f"error {reply.error.code}: {reply.error.reason}"
        on_error(ctxt, msg, ReplyCode.SITE_FAILURE, detail)
        return coded_error(msg, ReplyCode.SITE_FAILURE)

    return error_code_mod


def _refuse(what: str) -> InstructionRefusedError:
    return InstructionRefusedError(f"the coordinator's message: {what}; refusing")


def _int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(f"{key} is {value!r}, not an integer")
    return int(value)


COORDINATES = frozenset(
    {"protocol-hash", "phase", "cluster", "server-round", "budget-round", "he-fields"}
)
"""What a train, evaluate or budget message may carry: where in the protocol's plan it is (and,
under bfv, the packing of the encrypted update, which a wrong value only makes fail)."""


def check_round_config(protocol: Protocol, sha256: str, config: Mapping[str, Any]) -> int:
    """Check a train/evaluate config against the site's protocol; returns the cluster (-1:
    global). The message carries coordinates only (:data:`COORDINATES`), and the round and
    cluster must lie in the protocol's plan."""
    from securefed.training.dpsgd import max_clusters

    if str(config.get("protocol-hash", "")) != sha256:
        raise WrongProtocolError(
            f"the coordinator runs protocol {config.get('protocol-hash') or '(none)'}, this site "
            f"accepted {sha256}; refusing"
        )
    t = protocol.training
    cluster = _int(config, "cluster") if "cluster" in config else -1
    if not (cluster == -1 or 0 <= cluster < max_clusters(protocol)):
        raise _refuse(f"cluster {cluster} outside the protocol's clusters")
    rounds = t.global_rounds if cluster < 0 else t.finetune_rounds
    if "server-round" in config:
        rnd = _int(config, "server-round")
        if not 0 <= rnd <= rounds:
            raise _refuse(f"round {rnd} outside the phase's {rounds} rounds")
    extra = sorted(set(config) - COORDINATES)
    if extra:
        raise _refuse(
            f"{', '.join(extra)}: a message carries coordinates only "
            f"({', '.join(sorted(COORDINATES))}); the site takes its work from its own protocol"
        )
    phase = "global" if cluster < 0 else "cluster"
    if "phase" in config and config["phase"] != phase:
        raise _refuse(f"phase = {config['phase']!r} where cluster {cluster} implies {phase!r}")
    return cluster


# The study's non-training stages as messages (securefed.federation.site_stages): per stage the
# keys a request may carry. ``server-keys`` is the server's public key bundle, used only when its
# fingerprints are the ones the site's protocol pins (and its SITE.toml allows); ``envelope`` the
# server's sealed cluster model for this site (opened only under the pinned server key).
STAGE_KEYS: dict[str, frozenset[str]] = {
    "features": frozenset({"protocol-hash", "stage", "server-keys"}),
    "assign": frozenset({"protocol-hash", "stage", "server-keys", "envelope"}),
    "test": frozenset({"protocol-hash", "stage", "cluster"}),
    # the secure-aggregate clustering (securefed.federation.site_secure)
    "secure-keys": frozenset({"protocol-hash", "stage"}),
    "secure-round": frozenset(
        {"protocol-hash", "stage", "round", "kind", "directory", "centroids"}
    ),  # fmt: skip
    "secure-assign": frozenset({"protocol-hash", "stage", "centroids"}),
    # the DP test summary (securefed.federation.site_test_summary)
    "dp-test": frozenset({"protocol-hash", "stage", "directory"}),
}
# keys a request of the stage must carry (bytes, not empty); the others in STAGE_KEYS may be
# absent (a histogram round carries no centroids)
_STAGE_BYTES = {
    "features": ("server-keys",), "assign": ("server-keys", "envelope"),
    "secure-round": ("directory",), "secure-assign": ("centroids",), "dp-test": ("directory",),
}  # fmt: skip


def check_stage_config(protocol: Protocol, sha256: str, config: Mapping[str, Any]) -> str:
    """Check a stage request (a ``stage`` key: features, assign or test) against the site's
    protocol; returns the stage. The same rule as training: the protocol hash must be the
    site's, and a request carries only the stage's declared keys."""
    from securefed.training.dpsgd import max_clusters

    if str(config.get("protocol-hash", "")) != sha256:
        raise WrongProtocolError(
            f"the coordinator runs protocol {config.get('protocol-hash') or '(none)'}, this site "
            f"accepted {sha256}; refusing"
        )
    stage = str(config.get("stage", ""))
    if stage not in STAGE_KEYS:
        raise _refuse(f"stage {stage!r} is none of {', '.join(sorted(STAGE_KEYS))}")
    extra = sorted(set(config) - STAGE_KEYS[stage])
    if extra:
        raise _refuse(f"{', '.join(extra)}: not a key of a {stage} request")
    for key in _STAGE_BYTES.get(stage, ()):
        if not isinstance(config.get(key), bytes) or not config[key]:
            raise _refuse(f"a {stage} request without its {key}")
    if "cluster" in config:
        cluster = _int(config, "cluster")
        if not (cluster == -1 or 0 <= cluster < max_clusters(protocol)):
            raise _refuse(f"cluster {cluster} outside the protocol's clusters")
    return stage


def secaggplus_expected(protocol: Protocol) -> dict[str, Any]:
    """The SecAgg+ setup values the site's protocol implies (Flower's config keys)."""
    sa, t = protocol.secure_aggregation, protocol.training
    dp = t.client_dp.enabled
    return {
        Key.SHARE_NUMBER: int(sa.num_shares),
        Key.THRESHOLD: int(sa.reconstruction_threshold),
        Key.CLIPPING_RANGE: float(sa.quantization_range / 2 if dp else sa.clipping_range),
        Key.TARGET_RANGE: int(sa.quantization_range),
        Key.MOD_RANGE: _MOD_RANGE,
    }


def _check_setup(protocol: Protocol, configs: Mapping[str, Any]) -> None:
    for key, want in secaggplus_expected(protocol).items():
        got = configs.get(key)
        if got is None or isinstance(got, bool) or float(got) != float(want):
            raise _refuse(f"SecAgg+ {key} = {got!r} where the site's protocol implies {want!r}")
    least = int(protocol.training.min_sites_per_aggregate)
    sample = configs.get(Key.SAMPLE_NUMBER)
    if not isinstance(sample, int) or sample < least:
        raise _refuse(f"SecAgg+ over {sample!r} sites, fewer than min_sites_per_aggregate {least}")
    weight = configs.get(Key.MAX_WEIGHT)
    bound = float(protocol.secure_aggregation.max_weight)
    if not isinstance(weight, int | float) or not 1.0 <= float(weight) <= max(1.0, bound):
        raise _refuse(f"SecAgg+ max_weight {weight!r} outside [1, {bound:g}]")


def _node_ids(keys: Any) -> list[int]:
    try:
        return [int(k) for k in keys]
    except (TypeError, ValueError) as exc:
        raise _refuse("a SecAgg+ neighbour id that is not a node id") from exc


def _check_share_keys(
    protocol: Protocol, configs: Mapping[str, Any], own: int, state: ConfigRecord
) -> None:
    neighbours = _node_ids(k for k in configs if k != Key.STAGE)
    least = int(protocol.training.min_sites_per_aggregate)
    if own not in neighbours:
        raise _refuse("a SecAgg+ neighbour set without this site")
    least = max(least, int(protocol.secure_aggregation.reconstruction_threshold))
    if len(set(neighbours)) < least:
        raise _refuse(f"a SecAgg+ neighbour set of {len(set(neighbours))} sites, under {least}")
    state["neighbours"] = sorted(set(neighbours))


def _check_unmask(configs: Mapping[str, Any], own: int, state: ConfigRecord) -> None:
    if state.get("unmasked", False):
        raise _refuse("a second SecAgg+ unmask request in one round")
    active = _node_ids(configs.get(Key.ACTIVE_NODE_ID_LIST, []))
    dead = _node_ids(configs.get(Key.DEAD_NODE_ID_LIST, []))
    neighbours = set(_node_ids(state.get("neighbours", [])))
    if set(active) & set(dead):
        raise _refuse("a SecAgg+ unmask request listing a site as both active and dead")
    if len(set(active)) != len(active) or len(set(dead)) != len(dead):
        raise _refuse("a SecAgg+ unmask request listing a site twice")
    if own not in active:
        raise _refuse("a SecAgg+ unmask request that does not count this site as active")
    if not set(active) <= neighbours:
        raise _refuse("a SecAgg+ unmask request naming active sites outside the neighbour set")
    unknown = set(dead) - neighbours
    if unknown:
        # A node that dropped before the key exchange: Flower's server still names it dead to
        # its graph neighbours, but this site never received its keys, holds no share of it and
        # never masked with it, so there is nothing to reveal (Flower's own mod would fail on
        # it). It is dropped from the request; naming it reveals nothing more.
        log.warning("SecAgg+ unmask: node(s) %s dropped before the key exchange", sorted(unknown))
        configs[Key.DEAD_NODE_ID_LIST] = [n for n in dead if n in neighbours]  # type: ignore[index]
    state["unmasked"] = True


def _check_signatures(site: SecAggSite, configs: Mapping[str, Any], relayed: Any, own: int) -> None:
    """Every neighbour's keys signed by a distinct pinned site; this node's by this site."""
    neighbours = {int(k): (bytes(v[0]), bytes(v[1])) for k, v in configs.items()
                  if k != Key.STAGE and isinstance(v, list) and len(v) == 2}  # fmt: skip
    try:
        signed = {int(k): SignedKeys.from_list(v) for k, v in (relayed or {}).items()}
        sites = verify_secagg_keys(neighbours, signed, pinned_site_keys(site.protocol),
                                   site.sha256)  # fmt: skip
    except (KeySignatureError, ValueError) as exc:
        raise _refuse(f"SecAgg+ neighbour keys not authenticated: {exc}") from exc
    if sites.get(own) != site.site_id:
        raise _refuse("a SecAgg+ neighbour set that does not carry this site's own signed keys")


def _sign_setup_reply(site: SecAggSite, reply: Message, own: int) -> Message:
    if reply.has_error() or site.key is None:
        return reply
    record = reply.content.config_records[RECORD_KEY_CONFIGS]
    pk1, pk2 = bytes(record[Key.PUBLIC_KEY_1]), bytes(record[Key.PUBLIC_KEY_2])  # type: ignore[arg-type]
    signed = sign_secagg_keys(site.key, site.sha256, own, pk1, pk2)
    value: Any = signed.to_list()
    reply.content.config_records[KEYSIG_RECORD] = ConfigRecord({"signed": value})
    return reply


def make_secaggplus_site_mod(resolve: Callable[[Context], SecAggSite]) -> Mod:
    """Flower's ``secaggplus_mod`` behind the site's checks (see the module docstring).
    ``resolve(context)`` gives the site's accepted protocol, id and signing key."""

    def secaggplus_site_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        is_train = msg.metadata.message_type == MessageType.TRAIN and msg.has_content()
        if not is_train:
            return call_next(msg, ctxt)
        from securefed.federation.he_round import HE_RECORD

        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        site = resolve(ctxt)
        protocol = site.protocol
        secagg = protocol.training.aggregation == "secagg+"
        if configs is None:
            if secagg and HE_RECORD not in msg.content.config_records:
                raise _refuse("a clear train request under a secagg+ protocol")
            return call_next(msg, ctxt)
        if not secagg:
            raise _refuse("a SecAgg+ message under a protocol whose aggregation is not secagg+")
        stage = str(configs.get(Key.STAGE, ""))
        if stage == Stage.SETUP:
            ctxt.state.config_records[_STATE] = ConfigRecord({})
            _check_setup(protocol, configs)
        state = ctxt.state.config_records.get(_STATE)
        if state is None:
            raise _refuse(f"a SecAgg+ {stage or 'unknown'} stage before its setup")
        own = int(msg.metadata.dst_node_id)
        authenticated = bool(pinned_site_keys(protocol))
        if stage == Stage.SETUP and authenticated:
            if site.key is None:
                raise SiteTrustError(
                    "the protocol pins the sites' signing keys, and this site has none to sign "
                    "its SecAgg+ keys with (SITE.toml site.key)"
                )
            return _sign_setup_reply(site, secaggplus_mod(msg, ctxt, call_next), own)
        if stage == Stage.SHARE_KEYS:
            _check_share_keys(protocol, configs, own, state)
            if authenticated:
                relayed = msg.content.config_records.get(KEYSIGS_RECORD)
                _check_signatures(site, configs, relayed, own)
        elif stage == Stage.UNMASK:
            _check_unmask(configs, own, state)
        return secaggplus_mod(msg, ctxt, call_next)

    return secaggplus_site_mod
