"""A coordinator that deviates, as a component: builds any message it likes and drives a site's
real ClientApp chain (every mod, the site's task) in-process, keeping each simulated site's Flower
Context as a SuperNode would; the attacks of the hostile-coordinator review, each with the reply
code the site must answer. ``securefed site selftest`` (securefed.study.selftest) runs them
against the installed securefed; ``tests/adversary/`` has its own, independent harness.

What leaves a site here: nothing (in-process, local files only).
Tests: ``tests/study/test_selftest.py``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import FitIns, Metadata, ndarrays_to_parameters

from securefed.federation.client_app import SiteClient, make_client_app
from securefed.federation.config import SiteSettings
from securefed.federation.flower_internals import (
    RECORD_KEY_CONFIGS,
    generate_key_pairs,
    public_key_to_bytes,
)
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import SecAggPlusStage as Stage
from securefed.federation.flower_internals import recorddict_compat as compat
from securefed.federation.secagg_relay import KEYSIG_RECORD, KEYSIGS_RECORD
from securefed.federation.site_rules import ReplyCode, secaggplus_expected
from securefed.federation.site_runtime import ROUNDS_FILE
from securefed.federation.task import FlowerTask
from securefed.protocol import LoadedProtocol
from securefed.trust.audit_log import AUDIT_FILE

__all__ = ["ATTACKS", "AttackOutcome", "HostileCoordinator", "run_attacks"]


@dataclass(frozen=True)
class AttackOutcome:
    """One attack: refused as expected, or what the site did instead."""

    name: str
    what: str
    refused: bool
    detail: str


class HostileCoordinator:
    """The coordinator's side of one protocol's simulated sites (``sites``: partition id ->
    the site's settings; the site under test is partition 1). Its task counts data loads."""

    def __init__(
        self, loaded: LoadedProtocol, sites: dict[int, SiteSettings], task: FlowerTask
    ) -> None:
        self.loaded = loaded
        self.partitions = sorted(sites)
        self.loads: list[int] = []
        real_load = task.load_data

        def counting_load(*args: Any, **kwargs: Any) -> Any:
            self.loads.append(1)
            return real_load(*args, **kwargs)

        self.task = type(task)(**{**task.__dict__, "load_data": counting_load})
        self.site = sites[1]
        self.ordered = [sites[1], *(sites[p] for p in range(1, max(sites) + 1))]
        self.app = make_client_app(task=self.task, sites=self.ordered, phase="global")
        self.contexts: dict[int, Context] = {}
        self.reset()

    def reset(self) -> None:
        """Fresh sites for the next attack: a new ClientApp (its runtime), Flower contexts (each
        site's SecAgg+ state), round counters and data-load count; the logs are kept."""
        self.loads.clear()
        self.app = make_client_app(task=self.task, sites=self.ordered, phase="global")
        for site in self.ordered:
            if site.ledger_dir or site.work_dir:
                (Path(site.ledger_dir or site.work_dir) / ROUNDS_FILE).unlink(missing_ok=True)
        self.contexts = {
            p: Context(run_id=1, node_id=100 + p, node_config={"partition-id": p},
                       state=RecordDict(), run_config={})
            for p in self.partitions
        }  # fmt: skip

    def config(self, cluster: int = -1, **change: Any) -> dict[str, Any]:
        return {"server-round": 1, "phase": "global" if cluster < 0 else "cluster",
                "cluster": cluster, "protocol-hash": self.loaded.sha256, **change}  # fmt: skip

    def weights(self) -> list[Any]:
        return SiteClient(self.task, self.site).get_parameters({})

    def fit(
        self,
        pid: int,
        config: dict[str, Any],
        secagg: dict[str, Any] | None = None,
        relayed: dict[str, Any] | None = None,
    ) -> Any:
        """A train message to site ``pid``; ``secagg``: its SecAgg+ record, ``relayed``: the
        neighbours' key signatures it relays (securefed.federation.secagg_relay)."""
        content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(self.weights()),
                                                     config), True)  # fmt: skip
        if secagg is not None:
            content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(secagg)
        if relayed is not None:
            content.config_records[KEYSIGS_RECORD] = ConfigRecord(relayed)
        # A message as a SuperLink delivers it (metadata set; the public constructor needs a
        # ServerApp's run, which a selftest has not).
        meta = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0,
                        dst_node_id=100 + pid, reply_to_message_id="", group_id="1",
                        created_at=time.time(), ttl=600.0,
                        message_type=MessageType.TRAIN)  # fmt: skip
        msg = Message(metadata=meta, content=content)  # type: ignore[call-overload]
        return self.app(msg, self.contexts[pid])

    def setup(self, pid: int, **override: Any) -> Any:
        values = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: len(self.partitions),
                  **secaggplus_expected(self.loaded.protocol), Key.MAX_WEIGHT: 1.0}  # fmt: skip
        return self.fit(pid, self.config(), secagg={**values, **override})

    def keys_of(self, reply: Any) -> list[bytes]:
        record = reply.content.config_records[RECORD_KEY_CONFIGS]
        return [bytes(record[Key.PUBLIC_KEY_1]), bytes(record[Key.PUBLIC_KEY_2])]

    def signature_of(self, reply: Any) -> list[bytes] | None:
        """The site's signature over its SecAgg+ keys in a setup reply (None: none)."""
        record = reply.content.config_records.get(KEYSIG_RECORD)
        return None if record is None else list(record["signed"])

    def refusals(self) -> list[dict[str, Any]]:
        """The ``message-refused`` entries of the site under test's audit log."""
        path = Path(self.site.ledger_dir or self.site.work_dir) / AUDIT_FILE
        if not path.is_file():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e["details"] for e in entries if e.get("event") == "message-refused"]


_H = HostileCoordinator
AttackFn = Callable[[_H, _H], tuple[Any, _H, bool]]
"""(secagg+ sites, fedavg sites) -> (the site's reply, the sites it ran in, whether the refusal
must come before any case is loaded)."""
_REFUSED = ReplyCode.INSTRUCTION_REFUSED


def _check(study: _H, reply: Any, code: int, before: int, data_first: bool) -> tuple[bool, str]:
    if not reply.has_error():
        return False, "the site answered"
    if int(reply.error.code) != code:
        return False, f"refused with code {reply.error.code} ({reply.error.reason}), not {code}"
    if reply.has_content():
        return False, "the error reply carried content"
    logged = [r for r in study.refusals()[before:] if int(r.get("code", 0)) == code]
    if not logged:
        return False, "no message-refused entry in the site's audit log"
    if data_first and study.loads:
        return False, "the site loaded cases before refusing"
    return True, f"refused: {reply.error.reason} ({code}), logged"


def _clear_train(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
    return secure.fit(1, secure.config()), secure, True


def _setup_with(**override: Any) -> AttackFn:
    def attack(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
        return secure.setup(1, **override), secure, True

    return attack


def _lonely_neighbours(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
    own = secure.keys_of(secure.setup(1))
    share = {Key.STAGE: Stage.SHARE_KEYS, "101": own}
    return secure.fit(1, secure.config(), secagg=share), secure, True


def _sybil_neighbours(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
    """The site's own signed keys and two pairs of keys the coordinator made (made-up sites)."""
    reply = secure.setup(1)
    fake = {}
    for nid in (901, 902):
        (_, pk1), (_, pk2) = generate_key_pairs(), generate_key_pairs()
        fake[str(nid)] = [public_key_to_bytes(pk1), public_key_to_bytes(pk2)]
    share = {Key.STAGE: Stage.SHARE_KEYS, "101": secure.keys_of(reply), **fake}
    own_sig = secure.signature_of(reply)
    relayed = {"101": own_sig} if own_sig is not None else {}
    return secure.fit(1, secure.config(), secagg=share, relayed=relayed), secure, True


def _active_and_dead(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
    replies = {str(100 + p): secure.setup(p) for p in secure.partitions}
    keys = {n: secure.keys_of(r) for n, r in replies.items()}
    sigs = {n: secure.signature_of(r) for n, r in replies.items()}
    relayed = {n: s for n, s in sigs.items() if s is not None}
    secure.fit(1, secure.config(), secagg={Key.STAGE: Stage.SHARE_KEYS, **keys}, relayed=relayed)
    unmask = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [101, 102],
              Key.DEAD_NODE_ID_LIST: [101]}  # fmt: skip
    return secure.fit(1, secure.config(), secagg=unmask), secure, False


def _instruction(**change: Any) -> AttackFn:
    def attack(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
        return plain.fit(1, {**plain.config(), **change}), plain, True

    return attack


def _replayed_round(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
    """A round answered once, then asked again (to another set of sites, the sums subtract)."""
    first = plain.fit(1, plain.config(cluster=0))
    if first.has_error():  # the honest round itself failed: the attack proves nothing
        raise RuntimeError(f"the honest round was refused: {first.error.reason}")
    plain.loads.clear()
    return plain.fit(1, plain.config(cluster=0)), plain, True


def _foreign_hash(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
    config = {**plain.config(), "protocol-hash": "sha256:" + "1" * 64}
    return plain.fit(1, config), plain, True


def _error_text(secure: _H, plain: _H) -> tuple[Any, _H, bool]:
    # cluster 1, of which the site under test holds no train case (a plain protocol): a failure
    return plain.fit(1, plain.config(cluster=1)), plain, False


# (name, what the coordinator tries, attack, the code the site must answer)
ATTACKS: list[tuple[str, str, AttackFn, ReplyCode]] = [
    ("clear-train", "a plain train message under secagg+ (weights back in clear)", _clear_train,
     _REFUSED),
    ("secagg-threshold", "SecAgg+ reconstruction threshold 1", _setup_with(threshold=1), _REFUSED),
    ("secagg-shares", "SecAgg+ with one share", _setup_with(share_num=1), _REFUSED),
    ("secagg-sample", "a SecAgg+ aggregate of one site", _setup_with(sample_num=1), _REFUSED),
    ("secagg-clipping", "a SecAgg+ clipping range of its choice",
     _setup_with(clipping_range=1e9), _REFUSED),
    ("secagg-neighbours", "a neighbour set holding only the site", _lonely_neighbours, _REFUSED),
    ("secagg-sybil", "made-up neighbours: SecAgg+ keys the coordinator generated",
     _sybil_neighbours, _REFUSED),
    ("secagg-unmask", "an unmask request naming the site active and dead", _active_and_dead,
     _REFUSED),
    ("seed", "a shifted seed (another round's randomness)", _instruction(seed=2000), _REFUSED),
    ("round", "a round outside the phase's plan", _instruction(**{"server-round": 99}), _REFUSED),
    ("lr", "its own learning rate", _instruction(lr=5.0), _REFUSED),
    ("local-steps", "local-steps 0 (steps following the case count)",
     _instruction(**{"local-steps": 0}), _REFUSED),
    ("replayed-round", "a round the site answered, asked again", _replayed_round, _REFUSED),
    ("wrong-protocol", "another protocol's hash", _foreign_hash, ReplyCode.WRONG_PROTOCOL),
    ("error-text", "a failure answered with its exception text", _error_text,
     ReplyCode.SITE_FAILURE),
]  # fmt: skip


def run_attacks(
    secure: HostileCoordinator,
    plain: HostileCoordinator,
    progress: Callable[[AttackOutcome], None] | None = None,
) -> list[AttackOutcome]:
    """Every attack of :data:`ATTACKS` (``secure``: the sites of a secagg+ protocol, ``plain``:
    of a fedavg one, so that a plain train message reaches the instruction checks), then one
    honest message the site must still answer."""
    out: list[AttackOutcome] = []
    for name, what, attack, code in ATTACKS:
        secure.reset()
        plain.reset()
        before = {id(secure): len(secure.refusals()), id(plain): len(plain.refusals())}
        try:
            reply, study, data_first = attack(secure, plain)
            refused, detail = _check(study, reply, int(code), before[id(study)], data_first)
        except Exception as exc:  # noqa: BLE001 - an attack that crashes the site is not refused
            refused, detail = False, f"the attack did not run: {type(exc).__name__}: {exc}"[:200]
        out.append(AttackOutcome(name, what, refused, detail))
        if progress is not None:
            progress(out[-1])
    plain.reset()
    honest = plain.fit(1, plain.config())  # the site still serves the protocol it accepted
    served = not honest.has_error()
    out.append(AttackOutcome(
        "control", "an honest train message of the accepted protocol", served,
        "answered (the checks refuse deviations only)" if served
        else f"refused an honest message: {honest.error.reason}",
    ))  # fmt: skip
    if progress is not None:
        progress(out[-1])
    return out
