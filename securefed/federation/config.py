"""Configuration carried by Flower: the run config of one federated phase (server side) and the
node config of one site (site side).

Run config (``[tool.flwr.app.config]`` + ``flwr run --run-config`` overrides, or given directly to
the simulation engine) holds only study-level values and no site path. Node config
(``flower-supernode --node-config``) holds the site-local settings: partition id, data dir, work
dir, the site's own copy of the protocol and of its cluster assignments.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from securefed.errors import ConfigError

__all__ = ["STUDY_STAGES", "PhaseConfig", "SiteSettings", "parse_sites"]

Aggregation = Literal["fedavg", "secagg+", "bfv"]
# run config ``stage``: "" (a training phase) or a study stage over the deployment
STUDY_STAGES = (
    "", "features", "assign", "test", "secure-keys", "secure-round", "secure-assign", "dp-test",
)  # fmt: skip


def parse_sites(text: str) -> tuple[int, ...]:
    """``"1,4,7"`` -> ``(1, 4, 7)`` (the partition ids taking part in a phase)."""
    try:
        sites = tuple(int(p) for p in str(text).replace(" ", "").split(",") if p)
    except ValueError as exc:
        raise ConfigError(
            f"run config 'sites': expected comma separated ints, got {text!r}"
        ) from exc
    if len(set(sites)) != len(sites):
        raise ConfigError(f"run config 'sites': repeated partition ids in {text!r}")
    return sites


@dataclass(frozen=True)
class PhaseConfig:
    """One federated phase (global FedAvg or the finetuning of one cluster).

    ``cluster = -1`` is the global phase. ``local_steps = 0`` means no cap (full local epochs).
    ``initial_weights`` empty means: ask one site for its (seeded) initial model.
    ``server_lr``/``server_momentum``: the server's update on the aggregate (FedAvgM; 1/0 = plain
    FedAvg). ``validate = false``: no federated evaluation (the sites of a protocol that claims a
    finite epsilon keep their validation metrics, securefed.protocol.egress); the last round is
    the phase's result.
    """

    out_dir: str
    sites: str  # comma separated partition ids
    protocol_hash: str
    rounds: int
    lr: float
    phase: str = "global"  # global | cluster
    cluster: int = -1
    local_epochs: int = 1
    local_steps: int = 0
    aggregation: Aggregation = "secagg+"
    min_sites: int = 2
    num_shares: int = 3
    reconstruction_threshold: int = 2
    clipping_range: float = 8.0
    quantization_range: int = 4_194_304
    max_weight: float = 1000.0
    timeout_s: float = 120.0
    node_wait_s: float = 600.0  # a deadline: on a loaded machine Ray starts its actors slowly
    initial_weights: str = ""
    assignments: str = ""
    eval_round_zero: bool = False
    validate: bool = True
    validate_every: int = 1  # validate in rounds r with r % validate_every == 0 and the last
    server_lr: float = 1.0
    server_momentum: float = 0.0
    seed: int = 0
    node_sites: str = ""  # "node-id:partition-id,..." of the registered (authenticated) nodes
    he_context: str = ""  # bfv: the server's aggregator context (parameters only, no key)
    decryptor: int = -1  # bfv: partition id of the key holder that decrypts the verified sum
    he_fields: int = 2  # bfv: values per slot (securefed.crypto.bfv.encoding_for)
    client_dp: str = ""  # client-level DP: the plan inputs (JSON, securefed.training.client_dp)
    dp_training: str = ""  # "dp-sgd" | "client-dp": ask the sites' budgets before each round
    sent_arrays: str = ""  # "i,j,...": the arrays sites send back (training.trainable); "": all
    weighted: bool = False  # all-sites cluster phase: sites send w*update and w (.weighting)
    stage: str = ""  # "": a training phase; features | assign | test: a study stage (stage_server)

    def __post_init__(self) -> None:
        for name in ("out_dir", "sites", "protocol_hash"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"run config {name.replace('_', '-')!r} is empty")
        if self.phase not in ("global", "cluster"):
            raise ConfigError(f"run config 'phase': expected global or cluster, got {self.phase!r}")
        if self.phase == "cluster" and self.cluster < 0:
            raise ConfigError("run config 'cluster': a cluster phase needs a cluster id >= 0")
        if self.aggregation not in ("fedavg", "secagg+", "bfv"):
            raise ConfigError(
                f"run config 'aggregation': {self.aggregation!r} is not served by the Flower app "
                "(fedavg, secagg+ or bfv)"
            )
        if self.aggregation == "bfv" and (not self.he_context or self.decryptor < 0):
            raise ConfigError(
                "run config: a bfv phase needs 'he-context' (the aggregator context made by the "
                "key dealing) and 'decryptor' (the decrypting site's partition id)"
            )
        self._check_update_encoding()
        if self.he_fields not in (1, 2):
            raise ConfigError(f"run config 'he-fields': 1 or 2, got {self.he_fields}")
        if self.stage not in STUDY_STAGES:
            raise ConfigError(
                f"run config 'stage': expected one of {', '.join(STUDY_STAGES[1:])}, got "
                f"{self.stage!r}"
            )
        if self.rounds < 0 or self.validate_every < 1:
            raise ConfigError("run config 'rounds' must be >= 0 and 'validate-every' >= 1")
        if self.server_lr <= 0 or not 0 <= self.server_momentum < 1:
            raise ConfigError(
                f"run config: server-lr ({self.server_lr}) must be > 0 and server-momentum "
                f"({self.server_momentum}) in [0, 1)"
            )
        if self.timeout_s <= 0:
            raise ConfigError("run config 'timeout-s' must be > 0 (a round never waits forever)")
        parse_sites(self.sites)
        self.registered_nodes  # noqa: B018 - validates node_sites
        self.sent_positions  # noqa: B018 - validates sent_arrays

    def _check_update_encoding(self) -> None:
        """Client-level DP and the case-weighted cluster average change what a reply holds."""
        if self.client_dp:
            try:
                inputs = json.loads(self.client_dp)
            except ValueError as exc:
                raise ConfigError(f"run config 'client-dp': not JSON ({exc})") from exc
            if not isinstance(inputs, dict) or self.aggregation != "secagg+":
                raise ConfigError(
                    "run config 'client-dp': a JSON table of the plan inputs, under secagg+ only"
                )
        if self.weighted and (self.phase != "cluster" or self.aggregation == "fedavg"):
            raise ConfigError(
                "run config 'weighted': a case-weighted average is a cluster phase's, under "
                "secagg+ or bfv"
            )

    @property
    def registered_nodes(self) -> dict[int, int]:
        """{node id: partition id} of the nodes the coordinator registered by their
        authentication key (empty: no node authentication, loopback and simulation)."""
        out: dict[int, int] = {}
        for item in filter(None, (x.strip() for x in self.node_sites.split(","))):
            nid, sep, pid = item.partition(":")
            if not sep or not nid.isdigit() or not pid.isdigit():
                raise ConfigError(f"run config 'node-sites': {item!r} is not node-id:partition-id")
            if int(nid) in out or int(pid) in out.values():
                raise ConfigError(f"run config 'node-sites': {item!r} repeats a node or site")
            out[int(nid)] = int(pid)
        return out

    @property
    def sent_positions(self) -> tuple[int, ...] | None:
        """Positions of the model arrays the sites send back (None: every array)."""
        items = [x.strip() for x in self.sent_arrays.split(",") if x.strip()]
        if not items:
            return None
        if not all(x.isdigit() for x in items) or sorted(set(map(int, items))) != list(
            map(int, items)
        ):
            raise ConfigError(
                f"run config 'sent-arrays': {self.sent_arrays!r} is not increasing array positions"
            )
        return tuple(int(x) for x in items)

    @property
    def site_ids(self) -> tuple[int, ...]:
        return parse_sites(self.sites)

    @property
    def name(self) -> str:
        if self.stage:
            return self.stage
        return "global" if self.phase == "global" else f"cluster-{self.cluster}"

    def digest(self) -> str:
        """Identity of what determines the phase's result (resume refuses a different one)."""
        data = asdict(self)
        for key in ("out_dir", "node_wait_s", "timeout_s", "node_sites", "he_context"):
            data.pop(key)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_run_config(self) -> dict[str, Any]:
        """Flower run config (keys with dashes, scalar values)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> PhaseConfig:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = str(key).replace("-", "_")
            if name in known:
                values[name] = value
        missing = [
            n for n in ("out_dir", "sites", "protocol_hash", "rounds", "lr") if n not in values
        ]
        if missing:
            raise ConfigError(
                "run config: missing "
                + ", ".join(m.replace("_", "-") for m in missing)
                + " (set them in [tool.flwr.app.config] or with flwr run --run-config)"
            )
        casts = {"int": int, "float": float, "str": str, "bool": bool}
        for name, value in list(values.items()):
            kind = str(known[name].type).split("|")[0].strip()
            if kind in casts and not isinstance(value, bool | int | float | str):
                raise ConfigError(f"run config {name!r}: unsupported value {value!r}")
            if kind == "int":
                values[name] = int(value)
            elif kind == "float":
                values[name] = float(value)
            elif kind == "bool":
                values[name] = bool(value)
            elif kind in ("str", "Aggregation"):
                values[name] = str(value)
        return cls(**values)


@dataclass(frozen=True)
class SiteSettings:
    """Site-local settings of one SuperNode (never sent to the server).

    ``protocol``: the site's own copy of the study protocol (its hash is checked against the
    server's). ``assignments``: the site's clusters.csv (empty: use the run's, simulation only).
    """

    partition_id: int
    data_dir: str
    protocol: str
    work_dir: str = ""
    assignments: str = ""
    device: str = "cpu"
    ledger_dir: str = ""
    partitions: str = ""  # the site's partition file; its Patient_ID column groups cases
    site_config: str = (
        ""  # the site's trust and policy (securefed site init); required in deployment
    )
    he_key: str = ""  # the site's BFV key (bfv aggregation); empty: <ledger-dir>/he/bfv.key

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> SiteSettings:
        missing = [k for k in ("partition-id", "data-dir", "protocol") if k not in node_config]
        if missing:
            raise ConfigError(
                "node config: missing " + ", ".join(missing) + " (flower-supernode --node-config "
                "\"partition-id=3 data-dir='/data/fets' protocol='/study/protocol.toml'\")"
            )
        return cls(
            partition_id=int(node_config["partition-id"]),
            data_dir=str(node_config["data-dir"]),
            protocol=str(node_config["protocol"]),
            work_dir=str(node_config.get("work-dir", "")),
            assignments=str(node_config.get("assignments", "")),
            device=str(node_config.get("device", "cpu")),
            ledger_dir=str(node_config.get("ledger-dir", "")),
            partitions=str(node_config.get("partitions", "")),
            site_config=str(node_config.get("site-config", "")),
            he_key=str(node_config.get("he-key", "")),
        )

    def to_node_config(self) -> str:
        """The ``--node-config`` string for ``flower-supernode``."""
        parts = [f"partition-id={self.partition_id}"]
        for key, value in (
            ("data-dir", self.data_dir),
            ("protocol", self.protocol),
            ("work-dir", self.work_dir),
            ("assignments", self.assignments),
            ("device", self.device),
            ("ledger-dir", self.ledger_dir),
            ("partitions", self.partitions),
            ("site-config", self.site_config),
            ("he-key", self.he_key),
        ):
            if value:
                parts.append(f"{key}={json.dumps(str(value))}")
        return " ".join(parts)
