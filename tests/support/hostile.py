"""A hostile coordinator: builds any message it likes and drives the real ClientApp chain (every
mod: pacing, coded errors, the egress guard, the BFV decrypt mod, SecAgg+ behind the site's
checks, the NumPyClient) of simulated sites in-process, keeping each site's Flower Context (its
state) across messages as a SuperNode would. The sites' task counts every data load, so a test
can assert that a refused message touched no data."""

from __future__ import annotations

import json
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import (
    FitIns,
    GetPropertiesIns,
    MessageTypeLegacy,
    Metadata,
    ndarrays_to_parameters,
)
from flwr.serverapp import Grid

from securefed.crypto import generate_keys, write_keys
from securefed.federation.client_app import SiteClient, make_client_app
from securefed.federation.config import SiteSettings
from securefed.federation.flower_internals import RECORD_KEY_CONFIGS
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import SecAggPlusStage as Stage
from securefed.federation.flower_internals import recorddict_compat as compat
from securefed.federation.secagg_relay import SignedKeyRelay
from securefed.federation.site_rules import secaggplus_expected
from securefed.protocol import load_protocol
from securefed.trust.audit_log import AUDIT_FILE

from .flower import make_task, write_assignments, write_protocol
from .trust import trusted_site_configs

__all__ = [
    "LAYOUT",
    "Federation",
    "InProcessGrid",
    "pinned_federation",
    "secagg_until_unmask",
]

LAYOUT = {
    1: [("train", 0)] * 3 + [("val", 0)],
    2: [("train", 0)] * 2 + [("train", 1)] + [("val", 1)],
    3: [("train", 1)] * 3 + [("val", 1)],
}


@dataclass
class Federation:
    """Three simulated sites of one protocol, each with its own Context, work dir and logs."""

    folder: Path
    aggregation: str = "secagg+"
    protocol_text: str | None = None
    make: Callable[[], Any] = make_task  # the sites' task (tiny model by default)
    site_configs: dict[int, Path] = field(default_factory=dict)  # partition -> SITE.toml
    loads: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.protocol = write_protocol(self.folder, aggregation=self.aggregation)
        if self.protocol_text is not None:
            self.protocol.write_text(self.protocol_text)
        self.loaded = load_protocol(self.protocol)
        asg = write_assignments(self.folder / "clusters.csv", LAYOUT)
        self.sites = [
            SiteSettings(
                partition_id=p,
                data_dir=str(self.folder),
                protocol=str(self.protocol),
                assignments=str(asg),
                work_dir=str(self.folder / f"site{p}"),
                site_config=str(self.site_configs.get(p, "")),
            )
            for p in (0, *LAYOUT)
        ]  # fmt: skip  (index = partition id; partition 0 holds no cases)
        base = self.make()
        real_load = base.load_data

        def counting_load(*args: Any, **kwargs: Any) -> Any:
            self.loads.append(1)
            return real_load(*args, **kwargs)

        self.task = type(base)(**{**base.__dict__, "load_data": counting_load})
        self.app = make_client_app(task=self.task, sites=self.sites, phase="global")
        self.contexts = {
            p: Context(run_id=1, node_id=100 + p, node_config={"partition-id": p},
                       state=RecordDict(), run_config={})
            for p in LAYOUT
        }  # fmt: skip

    # -- what a coordinator sends ------------------------------------------------------------
    def honest_config(self, rnd: int = 1, cluster: int = -1) -> dict[str, Any]:
        return {"server-round": rnd, "phase": "global" if cluster < 0 else "cluster",
                "cluster": cluster, "protocol-hash": self.loaded.sha256}  # fmt: skip

    def start_weights(self) -> list[np.ndarray]:
        return SiteClient(self.task, self.sites[1]).get_parameters({})

    def message(self, pid: int, message_type: str, content: RecordDict) -> Message:
        """A message as a SuperLink delivers it to site ``pid`` (node id 100 + pid)."""
        meta = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0,
                        dst_node_id=100 + pid, reply_to_message_id="", group_id="1",
                        created_at=time.time(), ttl=600.0, message_type=message_type)  # fmt: skip
        return Message(metadata=meta, content=content)

    def deliver(self, msg: Message) -> Message:
        """Site ``dst_node_id - 100`` answers ``msg`` through its whole ClientApp chain."""
        return self.app(msg, self.contexts[int(msg.metadata.dst_node_id) - 100])

    def send(self, pid: int, message_type: str, content: RecordDict) -> Message:
        return self.deliver(self.message(pid, message_type, content))

    def query(self, pid: int, config: dict[str, Any]) -> Message:
        """A stage request (a get_properties message with ``config``) to site ``pid``."""
        content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config))
        return self.send(pid, MessageTypeLegacy.GET_PROPERTIES, content)

    @staticmethod
    def props(reply: Message) -> dict[str, Any]:
        """The properties of a stage reply that must not be an error."""
        assert not reply.has_error(), reply.error
        return dict(compat.recorddict_to_getpropertiesres(reply.content).properties)

    def train_content(self, config: dict[str, Any], secagg: dict[str, Any]) -> RecordDict:
        """A train message's content: the start weights, ``config`` and SecAgg+ ``secagg``."""
        ins = FitIns(ndarrays_to_parameters(self.start_weights()), config)
        content = compat.fitins_to_recorddict(ins, True)
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(secagg)
        return content

    def fit(self, pid: int, config: dict[str, Any], weights: list[np.ndarray] | None = None,
            secagg: dict[str, Any] | None = None) -> Message:  # fmt: skip
        ins = FitIns(ndarrays_to_parameters(weights or self.start_weights()), config)
        content = compat.fitins_to_recorddict(ins, True)
        if secagg is not None:
            content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(secagg)
        return self.send(pid, MessageType.TRAIN, content)

    def honest_setup(self, **override: Any) -> dict[str, Any]:
        values = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 3,
                  **secaggplus_expected(self.loaded.protocol), Key.MAX_WEIGHT: 1.0}  # fmt: skip
        return {**values, **override}

    # -- what the site kept --------------------------------------------------------------------
    def audit(self, pid: int) -> list[dict[str, Any]]:
        """The site's audit log entries (verification has its own tests)."""
        path = Path(self.sites[pid].work_dir) / AUDIT_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def refusals(self, pid: int) -> list[dict[str, Any]]:
        return [e["details"] for e in self.audit(pid) if e["event"] == "message-refused"]


def pinned_federation(
    folder: Path, with_keys: bool = True, edit: Callable[[dict[str, Any]], None] | None = None
) -> Federation:
    """Three sites of a signed protocol that pins their signing keys (as a deployment protocol
    does); each SITE.toml names the site's key (unless ``with_keys`` is off). ``edit`` changes
    the protocol's TOML data before it is signed."""
    folder.mkdir(parents=True)
    proto = write_protocol(folder, aggregation="secagg+")
    data = tomllib.loads(proto.read_text())
    if edit is not None:
        edit(data)
    keys = folder / "keys"
    write_keys(generate_keys("server", "server"), keys)
    data["sites"] = []
    for p in LAYOUT:
        site = generate_keys("site", f"site-{p}")
        if with_keys:
            write_keys(site, keys)
        data["sites"].append({"id": f"site-{p}", "partition_id": p,
                              "signing_key": site.public.signing_fingerprint})  # fmt: skip
    proto.write_text(tomli_w.dumps(data))
    configs = trusted_site_configs(
        folder / "configs", proto, [f"site-{p}" for p in LAYOUT], keys / "server.pub.json",
        min_sites_per_aggregate=2, require_dp_training=False, require_version_pin=False,
        forbidden_release_modes=(), max_total_epsilon=float("inf"),
    )  # fmt: skip
    return Federation(folder, protocol_text=proto.read_text(),
                      site_configs={p: configs[f"site-{p}"] for p in LAYOUT})  # fmt: skip


class InProcessGrid(Grid):
    """The coordinator's grid: delivers each message to the federation's site in-process (only
    ``send_and_receive``, what Flower's SecAgg+ workflow uses)."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return [self.fed.deliver(m) for m in messages]

    def _unused(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    run = set_run = create_message = get_node_ids = push_messages = pull_messages = _unused  # type: ignore[assignment]


def secagg_until_unmask(fed: Federation, sites: tuple[int, ...] = tuple(LAYOUT)) -> list[Message]:
    """A SecAgg+ round of ``sites`` up to its unmask stage (setup, share keys, masked vectors:
    every site trains), through the relay of the sites' key signatures. Returns the replies of
    the masked-vector stage."""
    relay = SignedKeyRelay(InProcessGrid(fed))
    for pid in sites:  # each site's SecAgg+ state starts afresh, as at a round's setup
        fed.contexts[pid].state.config_records.clear()
    setup_values = fed.honest_setup(**{Key.SAMPLE_NUMBER: len(sites)})
    setup = [fed.message(p, MessageType.TRAIN,
                         fed.train_content(fed.honest_config(), setup_values))
             for p in sites]  # fmt: skip
    keys = {}
    for reply in relay.send_and_receive(setup):
        assert not reply.has_error(), reply.error
        rec = reply.content.config_records[RECORD_KEY_CONFIGS]
        keys[str(reply.metadata.src_node_id)] = [rec[Key.PUBLIC_KEY_1], rec[Key.PUBLIC_KEY_2]]
    share = [fed.message(p, MessageType.TRAIN, fed.train_content(
        fed.honest_config(), {Key.STAGE: Stage.SHARE_KEYS, **keys})) for p in sites]  # fmt: skip
    routed: dict[int, tuple[list[int], list[bytes]]] = {100 + p: ([], []) for p in sites}
    for reply in relay.send_and_receive(share):
        assert not reply.has_error(), reply.error
        rec = reply.content.config_records[RECORD_KEY_CONFIGS]
        for dst, ct in zip(rec[Key.DESTINATION_LIST], rec[Key.CIPHERTEXT_LIST], strict=True):
            routed[int(dst)][0].append(int(reply.metadata.src_node_id))
            routed[int(dst)][1].append(ct)
    collect = [fed.message(p, MessageType.TRAIN, fed.train_content(
        fed.honest_config(), {Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                              Key.SOURCE_LIST: routed[100 + p][0],
                              Key.CIPHERTEXT_LIST: routed[100 + p][1]}))
        for p in sites]  # fmt: skip
    return list(relay.send_and_receive(collect))
