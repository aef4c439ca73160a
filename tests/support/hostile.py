"""A hostile coordinator: builds any message it likes and drives the real ClientApp chain (every
mod: pacing, coded errors, the egress guard, the BFV decrypt mod, SecAgg+ behind the site's
checks, the NumPyClient) of simulated sites in-process, keeping each site's Flower Context (its
state) across messages as a SuperNode would. The sites' task counts every data load, so a test
can assert that a refused message touched no data."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, Metadata, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from securefed.federation.client_app import SiteClient, make_client_app
from securefed.federation.config import SiteSettings
from securefed.federation.site_rules import secaggplus_expected
from securefed.protocol import load_protocol
from securefed.trust.audit_log import AUDIT_FILE

from .flower import make_task, write_assignments, write_protocol

__all__ = ["Federation", "LAYOUT"]

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
        t = self.loaded.protocol.training
        return {"server-round": rnd, "phase": "global" if cluster < 0 else "cluster",
                "cluster": cluster, "lr": float(t.lr if cluster < 0 else t.finetune_lr),
                "local-epochs": int(t.local_epochs), "local-steps": int(t.local_steps or 0),
                "seed": int(t.seed), "protocol-hash": self.loaded.sha256}  # fmt: skip

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
