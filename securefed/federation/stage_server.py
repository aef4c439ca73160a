"""The coordinator's ServerApp for the study's stages over the deployment (run config ``stage``;
the site side is securefed.federation.site_stages). One ``flwr run`` per stage; what a stage
reads and writes lies in its ``out-dir`` on the coordinator:

- ``features``: reads ``server-keys.json`` (the server's public bundle, which each site checks
  against its protocol's pins); asks every site of ``sites`` for its release and writes each
  sealed envelope to ``inbox/partition-<id>.features.env`` (``securefed server collect`` opens
  them: the same envelopes as the file path);
- ``assign``: reads ``server-keys.json`` and ``models/partition-<id>.cluster-model.env`` (the
  fitted model sealed to that site) and delivers each; the sites keep their assignments;
- ``test``: reads ``test-models.json`` (``[{"method", "cluster", "weights"}]``, weights files
  relative to it) and asks every site to score its own test cases of each model's cluster;
  writes the replies (per site and model: the count and mean Dice per region the site's protocol
  lets it send) to ``scores.json``;
- ``secure-keys``, ``secure-round``, ``secure-assign`` (the secure-aggregate clustering) and
  ``dp-test`` (the DP test summary): the signed masking keys to ``keys.json``, each masked reply
  to ``masked/partition-<id>.bin``.

``state.json`` holds the stage's status (``completed`` or ``failed`` with the sites that
refused and their reply codes), as a training phase's does, so the coordinator waits on it the
same way. A failed stage is rerun as a whole: a site that released already resends the same
envelope, and a delivered model is refused as a replay only if its bytes are resent (the
coordinator seals each attempt afresh)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Message, MessageType
from flwr.common import (
    EvaluateIns,
    GetPropertiesIns,
    MessageTypeLegacy,
    Scalar,
    ndarrays_to_parameters,
)
from flwr.serverapp import Grid

from securefed.errors import ConfigError, SecurefedError, TooFewParticipantsError
from securefed.federation.config import PhaseConfig
from securefed.federation.discovery import discover_sites
from securefed.federation.flower_internals import recorddict_compat as compat
from securefed.fileio import atomic_write_bytes, read_json, write_json_atomic

__all__ = [
    "INBOX",
    "MODELS",
    "SCORES",
    "SERVER_KEYS",
    "TEST_MODELS",
    "StageFailure",
    "model_path",
    "run_server_stage",
]

log = logging.getLogger("securefed.flower")

SERVER_KEYS = "server-keys.json"
INBOX = "inbox"
MODELS = "models"
TEST_MODELS = "test-models.json"
SCORES = "scores.json"


def model_path(out_dir: Path, partition_id: int) -> Path:
    """Where the coordinator puts the cluster model sealed to one site (assign stage)."""
    return out_dir / MODELS / f"partition-{partition_id}.cluster-model.env"


def envelope_path(out_dir: Path, partition_id: int) -> Path:
    """Where the features stage writes a site's sealed release."""
    return out_dir / INBOX / f"partition-{partition_id}.features.env"


@dataclass(frozen=True)
class StageFailure:
    """A site that did not answer a stage: its partition and the reply's code (or timeout)."""

    partition_id: int
    reason: str


def _state(out_dir: Path, status: str, **extra: Any) -> None:
    write_json_atomic(out_dir / "state.json", {"status": status, **extra})


def run_server_stage(grid: Grid, cfg: PhaseConfig) -> None:
    """Run one stage (``cfg.stage``) over ``cfg.sites``; the outcome is in ``state.json``."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _state(out_dir, "running", stage=cfg.stage)
    try:
        nodes = discover_sites(grid, cfg)
        if cfg.stage == "features":
            failed = _features(grid, cfg, out_dir, nodes)
        elif cfg.stage == "assign":
            failed = _assign(grid, cfg, out_dir, nodes)
        elif cfg.stage == "test":
            failed = _test(grid, cfg, out_dir, nodes)
        elif cfg.stage in _SECURE:
            failed = _SECURE[cfg.stage](grid, cfg, out_dir, nodes)
        else:
            raise ConfigError(f"run config 'stage': {cfg.stage!r} is not a study stage")
    except SecurefedError as exc:
        _state(out_dir, "failed", stage=cfg.stage, error=f"[{exc.code}] {exc}")
        raise
    except Exception as exc:
        _state(out_dir, "failed", stage=cfg.stage, error=f"{type(exc).__name__}: {exc}")
        raise
    if failed:
        error = "; ".join(f"site {f.partition_id}: {f.reason}" for f in failed)
        _state(out_dir, "failed", stage=cfg.stage, error=f"{cfg.stage}: {error}",
               refused={str(f.partition_id): f.reason for f in failed})  # fmt: skip
        raise TooFewParticipantsError(f"{cfg.stage}: {error}")
    _state(out_dir, "completed", stage=cfg.stage)


def _ask(
    grid: Grid, cfg: PhaseConfig, nodes: dict[int, int], configs: dict[int, dict[str, Any]]
) -> tuple[dict[int, dict[str, Any]], list[StageFailure]]:
    """Send one stage query per site (``configs``: partition -> request config); the replies'
    properties by partition, and the sites that failed."""
    partition_of = {n: p for p, n in nodes.items()}
    msgs = [
        Message(
            content=compat.getpropertiesins_to_recorddict(GetPropertiesIns(config)),
            dst_node_id=nodes[pid],
            message_type=MessageTypeLegacy.GET_PROPERTIES,
            group_id=cfg.stage,
        )
        for pid, config in configs.items()
    ]
    got: dict[int, dict[str, Any]] = {}
    failed: list[StageFailure] = []
    for reply in grid.send_and_receive(msgs, timeout=cfg.timeout_s):
        pid = partition_of.get(reply.metadata.src_node_id, -1)
        if reply.has_error():
            failed.append(StageFailure(pid, f"{reply.error.reason} ({reply.error.code})"))
            continue
        got[pid] = dict(compat.recorddict_to_getpropertiesres(reply.content).properties)
    failed += [StageFailure(p, "no reply in time") for p in configs if p not in got
               and all(f.partition_id != p for f in failed)]  # fmt: skip
    return got, sorted(failed, key=lambda f: f.partition_id)


def _server_keys(out_dir: Path) -> bytes:
    path = out_dir / SERVER_KEYS
    if not path.is_file():
        raise ConfigError(
            f"{path}: the server's public keys are missing (the coordinator puts them)"
        )
    return path.read_bytes()


def _features(
    grid: Grid, cfg: PhaseConfig, out_dir: Path, nodes: dict[int, int]
) -> list[StageFailure]:
    base = {"protocol-hash": cfg.protocol_hash, "stage": "features",
            "server-keys": _server_keys(out_dir)}  # fmt: skip
    got, failed = _ask(grid, cfg, nodes, {pid: dict(base) for pid in cfg.site_ids})
    for pid, props in got.items():
        envelope = props.get("envelope")
        if not isinstance(envelope, bytes):
            failed.append(StageFailure(pid, "no envelope in the reply"))
            continue
        atomic_write_bytes(envelope_path(out_dir, pid), envelope)
    return failed


def _assign(
    grid: Grid, cfg: PhaseConfig, out_dir: Path, nodes: dict[int, int]
) -> list[StageFailure]:
    keys = _server_keys(out_dir)
    configs = {}
    for pid in cfg.site_ids:
        path = model_path(out_dir, pid)
        if not path.is_file():
            raise ConfigError(f"{path}: no sealed cluster model for site {pid}")
        configs[pid] = {"protocol-hash": cfg.protocol_hash, "stage": "assign",
                        "server-keys": keys, "envelope": path.read_bytes()}  # fmt: skip
    got, failed = _ask(grid, cfg, nodes, configs)
    failed += [StageFailure(p, "no acknowledgement") for p, props in got.items()
               if props.get("assigned") is not True]  # fmt: skip
    return failed


def _test(grid: Grid, cfg: PhaseConfig, out_dir: Path, nodes: dict[int, int]) -> list[StageFailure]:
    from securefed.training.checkpoints import load_weights

    listing = out_dir / TEST_MODELS
    if not listing.is_file():
        raise ConfigError(f"{listing}: the models to test are missing")
    partition_of = {n: p for p, n in nodes.items()}
    rows: list[dict[str, Any]] = []
    failed: list[StageFailure] = []
    for i, entry in enumerate(read_json(listing)):
        method, cluster = str(entry["method"]), int(entry["cluster"])
        params = ndarrays_to_parameters(load_weights(out_dir / str(entry["weights"])))
        config: dict[str, Scalar] = {
            "protocol-hash": cfg.protocol_hash, "stage": "test", "cluster": cluster,
        }  # fmt: skip
        msgs = [
            Message(
                content=compat.evaluateins_to_recorddict(EvaluateIns(params, dict(config)), True),
                dst_node_id=nodes[pid],
                message_type=MessageType.EVALUATE,
                group_id=f"test-{i}",
            )
            for pid in cfg.site_ids
        ]
        answered: set[int] = set()
        for reply in grid.send_and_receive(msgs, timeout=cfg.timeout_s):
            pid = partition_of.get(reply.metadata.src_node_id, -1)
            answered.add(pid)
            if reply.has_error():
                failed.append(StageFailure(pid, f"{reply.error.reason} ({reply.error.code})"))
                continue
            res = compat.recorddict_to_evaluateres(reply.content)
            scores = {k: float(v) for k, v in res.metrics.items()
                      if k.startswith("dice_") and isinstance(v, int | float)}  # fmt: skip
            rows.append({"method": method, "cluster": cluster, "partition_id": pid,
                         "num_test": int(res.num_examples), **scores})  # fmt: skip
        failed += [StageFailure(p, "no reply in time") for p in cfg.site_ids
                   if p not in answered]  # fmt: skip
    rows.sort(key=lambda r: (r["method"], r["cluster"], r["partition_id"]))
    write_json_atomic(out_dir / SCORES, rows)
    return failed


# -- the secure-aggregate clustering (site side: securefed.federation.site_secure) ----------------
def _secure_keys(
    grid: Grid, cfg: PhaseConfig, out_dir: Path, nodes: dict[int, int]
) -> list[StageFailure]:
    """Collect each site's signed masking key into ``keys.json`` (base64)."""
    import base64

    config = {"protocol-hash": cfg.protocol_hash, "stage": "secure-keys"}
    got, failed = _ask(grid, cfg, nodes, {pid: dict(config) for pid in cfg.site_ids})
    keys = {}
    for pid, props in got.items():
        key, signed = props.get("masking-key"), props.get("signed")
        if not isinstance(key, bytes) or not isinstance(signed, bytes):
            failed.append(StageFailure(pid, "no signed masking key in the reply"))
            continue
        keys[str(pid)] = {"masking-key": base64.b64encode(key).decode(),
                          "signed": signed.decode("ascii", "replace")}  # fmt: skip
    write_json_atomic(out_dir / "keys.json", keys)
    return failed


def _secure_round(
    grid: Grid, cfg: PhaseConfig, out_dir: Path, nodes: dict[int, int]
) -> list[StageFailure]:
    """Relay one round (``request.json``: round, kind, directory, centroids; the DP test
    summary's: the directory alone) to its participants and keep each masked reply in
    ``masked/partition-<id>.bin``."""
    import json

    request = read_json(out_dir / "request.json")
    config: dict[str, Any] = {"protocol-hash": cfg.protocol_hash, "stage": cfg.stage,
                              "directory": str(request["directory"]).encode()}  # fmt: skip
    if cfg.stage == "secure-round":
        config.update(round=int(request["round"]), kind=str(request["kind"]))
    if request.get("centroids") is not None:
        config["centroids"] = json.dumps(request["centroids"]).encode()
    got, failed = _ask(grid, cfg, nodes, {pid: dict(config) for pid in cfg.site_ids})
    for pid, props in got.items():
        masked = props.get("masked")
        if not isinstance(masked, bytes):
            failed.append(StageFailure(pid, "no masked vector in the reply"))
            continue
        atomic_write_bytes(out_dir / "masked" / f"partition-{pid}.bin", masked)
    return failed


def _secure_assign(
    grid: Grid, cfg: PhaseConfig, out_dir: Path, nodes: dict[int, int]
) -> list[StageFailure]:
    """Send the final public centroids (``centroids.json``); each site assigns its own cases."""
    centroids = (out_dir / "centroids.json").read_bytes()
    config = {"protocol-hash": cfg.protocol_hash, "stage": "secure-assign",
              "centroids": centroids}  # fmt: skip
    got, failed = _ask(grid, cfg, nodes, {pid: dict(config) for pid in cfg.site_ids})
    failed += [StageFailure(p, "no acknowledgement") for p, props in got.items()
               if props.get("assigned") is not True]  # fmt: skip
    return failed


_SECURE = {"secure-keys": _secure_keys, "secure-round": _secure_round,
           "secure-assign": _secure_assign, "dp-test": _secure_round}  # fmt: skip
