"""Run a federated phase in Flower's simulation engine or deployment engine, and the CFFL study
phases (global FedAvg, then one federation per cluster).

``run_phase`` returns the best weights, the best round and the per-round history, read back from
the phase's checkpoint folder (the same for both engines). A phase that fails (e.g. too few sites
in a SecAgg+ round) raises with the server's message; rerunning it resumes from the last
completed round.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from securefed.errors import (
    ConfigError,
    SecurefedError,
    TooFewParticipantsError,
    TrainingError,
)
from securefed.federated.checkpoints import PhaseCheckpoint, PhaseState, load_weights, read_json
from securefed.federated.flower.assignments import cluster_sites
from securefed.federated.flower.config import PhaseConfig, SiteSettings
from securefed.federated.flower.task import TASK_ENV, FlowerTask

__all__ = [
    "PhaseResult",
    "ClusterOutcome",
    "StudyPhases",
    "Deployment",
    "phase_config",
    "run_phase",
    "run_study_phases",
]

Engine = Literal["simulation", "deployment"]
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PhaseResult:
    """Outcome of one phase: best weights/round (by pooled validation Dice) and the history."""

    name: str
    out_dir: Path
    best_round: int | None
    best_score: float | None
    history: list[dict[str, Any]]
    best_weights: list[np.ndarray]

    @property
    def best_weights_path(self) -> Path:
        return PhaseCheckpoint(self.out_dir).best_path


@dataclass
class ClusterOutcome:
    """A cluster's model: finetuned by its own federation, or the global model (reported why)."""

    cluster: int
    sites: dict[int, int]  # partition id -> train cases of this cluster
    status: Literal["finetuned", "fallback-global"]
    reason: str
    weights_path: Path
    result: PhaseResult | None = None


@dataclass
class StudyPhases:
    global_result: PhaseResult
    clusters: dict[int, ClusterOutcome] = field(default_factory=dict)


# -- configuration from the protocol -----------------------------------------------------------
def phase_config(
    loaded: Any,
    *,
    out_dir: Path,
    sites: dict[int, int],
    assignments: Path,
    cluster: int | None = None,
    initial_weights: Path | None = None,
) -> PhaseConfig:
    """The PhaseConfig of the global phase (``cluster=None``) or of one cluster's finetuning,
    from a LoadedProtocol. ``sites`` maps partition id -> train case count (FedAvg weights);
    SecAgg+'s max_weight is tightened to the largest count (better quantisation precision, never
    above the protocol's bound)."""
    p = loaded.protocol
    t, sa = p.training, p.secure_aggregation
    if t.aggregation not in ("fedavg", "secagg+"):
        raise ConfigError(
            f"training.aggregation {t.aggregation!r}: the Flower engine serves fedavg and secagg+"
        )
    largest = max(sites.values()) if sites else 1
    return PhaseConfig(
        out_dir=str(out_dir),
        sites=",".join(str(s) for s in sorted(sites)),
        protocol_hash=loaded.sha256,
        rounds=t.global_rounds if cluster is None else t.finetune_rounds,
        lr=t.lr if cluster is None else t.finetune_lr,
        phase="global" if cluster is None else "cluster",
        cluster=-1 if cluster is None else int(cluster),
        local_epochs=t.local_epochs,
        local_steps=t.local_steps or 0,
        aggregation=t.aggregation,
        min_sites=t.min_sites_per_aggregate,
        num_shares=sa.num_shares,
        reconstruction_threshold=sa.reconstruction_threshold,
        clipping_range=sa.clipping_range,
        quantization_range=sa.quantization_range,
        max_weight=float(min(sa.max_weight, max(1, largest))),
        timeout_s=sa.timeout_s,
        initial_weights=str(initial_weights) if initial_weights else "",
        assignments=str(assignments),
        eval_round_zero=cluster is not None,
        # FedAvgM drives the long global phase; finetuning (CFFL) adapts gently with FedAvg.
        server_lr=t.server_lr if cluster is None else 1.0,
        server_momentum=t.server_momentum if cluster is None else 0.0,
        seed=t.seed,
    )


# -- results -------------------------------------------------------------------------------------
def _read_result(cfg: PhaseConfig) -> PhaseResult:
    ckpt = PhaseCheckpoint(Path(cfg.out_dir))
    if not ckpt.state_path.is_file():
        raise TrainingError(f"{cfg.name}: the server wrote no state in {cfg.out_dir}")
    state = PhaseState.from_json(read_json(ckpt.state_path), ckpt.state_path)
    if state.status != "completed":
        message = f"{cfg.name}: phase {state.status}: {state.error or 'no error recorded'}"
        if "SF171" in (state.error or "") or "too few" in (state.error or "").lower():
            raise TooFewParticipantsError(message)
        raise TrainingError(message)
    best = ckpt.best_path if ckpt.best_path.is_file() else ckpt.last_path
    return PhaseResult(
        name=cfg.name,
        out_dir=Path(cfg.out_dir),
        best_round=state.best_round,
        best_score=state.best_score,
        history=state.history,
        best_weights=load_weights(best),
    )


# -- simulation engine ---------------------------------------------------------------------------
def _run_simulation(cfg: PhaseConfig, sites: Sequence[SiteSettings], task: FlowerTask | None):
    from flwr.simulation import run_simulation

    from securefed.federated.flower.client_app import make_client_app
    from securefed.federated.flower.server_app import make_server_app

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    by_pid = {s.partition_id: s for s in sites}
    missing = [p for p in cfg.site_ids if p not in by_pid]
    if missing:
        raise ConfigError(f"{cfg.name}: no site settings for partition(s) {missing}")
    ordered = [by_pid[p] for p in cfg.site_ids]
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False},
    }
    try:
        run_simulation(
            server_app=make_server_app(cfg),
            client_app=make_client_app(task, ordered),
            num_supernodes=len(ordered),
            backend_config=backend_config,
        )
    except SecurefedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the server's state says what went wrong
        state = Path(cfg.out_dir) / "state.json"
        if not state.is_file():
            raise TrainingError(f"{cfg.name}: the simulation failed: {exc}") from exc


# -- deployment engine ---------------------------------------------------------------------------
@dataclass
class Deployment:
    """How to reach (or start) a SuperLink and SuperNodes.

    ``start_local``: start ``flower-superlink`` and one ``flower-supernode`` per site on this
    machine (loopback tests, single-host pilots); otherwise the SuperLink at ``address`` and the
    sites' SuperNodes are already running (real hospitals). TLS: give ``ca_cert`` (and, when
    starting locally, ``server_cert``/``server_key``); without them the connection is insecure
    (loopback only).
    """

    work_dir: Path
    address: str = "127.0.0.1"
    port: int = 9093
    start_local: bool = True
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    app_dir: Path = REPO_ROOT
    supernode_env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 60.0
    run_timeout_s: float = 1800.0
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def flwr_home(self) -> Path:
        return self.work_dir / "flwr-home"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env.update(
            FLWR_HOME=str(self.flwr_home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_DISABLE_UPDATE_CHECK="1",
        )
        return env

    def _tls_args(self, server: bool) -> list[str]:
        if self.ca_cert is None:
            return ["--insecure"]
        if server:
            if self.server_cert is None or self.server_key is None:
                raise ConfigError("TLS: starting a SuperLink needs server_cert and server_key")
            return [
                "--ssl-ca-certfile", str(self.ca_cert),
                "--ssl-certfile", str(self.server_cert),
                "--ssl-keyfile", str(self.server_key),
            ]  # fmt: skip
        return ["--root-certificates", str(self.ca_cert)]

    def _spawn(self, args: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen:
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / log_name).open("ab") as fh:
            proc = subprocess.Popen(
                args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.processes.append(proc)
        return proc

    def write_connection(self) -> None:
        """The Flower CLI's connection file (``$FLWR_HOME/config.toml``) for ``flwr run``."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", 'default = "securefed"', "", "[superlink.securefed]"]
        lines.append(f'address = "{self.address}:{self.port}"')
        if self.ca_cert is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.ca_cert}"')
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, sites: Sequence[SiteSettings]) -> None:
        """Start the SuperLink and one SuperNode per site (``start_local`` only)."""
        if not self.start_local:
            return
        env = self.env()
        bindir = Path(sys.executable).parent
        self._spawn(
            [str(bindir / "flower-superlink"), *self._tls_args(True),
             "--disable-runtime-dependency-installation",
             "--host", self.address, "--port", str(self.port)],
            "superlink.log", env,
        )  # fmt: skip
        _wait_port(self.address, self.port, self.startup_timeout_s, self.processes[-1])
        node_env = dict(env, **self.supernode_env)
        for i, site in enumerate(sites):
            self._spawn(
                [str(bindir / "flower-supernode"), *self._tls_args(False),
                 "--superlink", f"{self.address}:{self.port}",
                 "--port", str(self.port + 10 + i),
                 "--node-config", site.to_node_config()],
                f"supernode-{site.partition_id}.log", node_env,
            )  # fmt: skip

    def stop(self) -> list[int]:
        """Stop every process started here, with its descendants, by pid; returns the pids."""
        pids: list[int] = []
        for proc in reversed(self.processes):
            tree = [*_descendants(proc.pid), proc.pid]
            pids.extend(tree)
            for pid in tree:
                _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.processes.clear()
        return pids

    def submit(self, cfg: PhaseConfig) -> None:
        """``flwr run`` the app with the phase's run config, then wait for the server's state."""
        self.write_connection()
        overrides = []
        for key, value in cfg.to_run_config().items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            overrides.append(f"{key}={text}")
        env = self.env()
        bindir = Path(sys.executable).parent
        proc = subprocess.run(
            [str(bindir / "flwr"), "run", str(self.app_dir), "securefed",
             "--run-config", " ".join(overrides)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise TrainingError(
                f"{cfg.name}: `flwr run` failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}"
            )
        state_path = Path(cfg.out_dir) / "state.json"
        deadline = time.monotonic() + self.run_timeout_s
        while time.monotonic() < deadline:
            if state_path.is_file():
                status = read_json(state_path).get("status")
                if status in ("completed", "failed"):
                    return
            for p in self.processes:
                if p.poll() is not None and "superlink" in " ".join(map(str, p.args)):
                    raise TrainingError(f"{cfg.name}: the SuperLink exited ({p.returncode})")
            time.sleep(0.5)
        raise TrainingError(f"{cfg.name}: no result within {self.run_timeout_s:g} s")


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrainingError(f"flower-superlink exited ({proc.returncode}); see its log")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TrainingError(f"flower-superlink did not listen on {host}:{port} within {timeout:g} s")


def _descendants(pid: int) -> list[int]:
    """Child processes (recursively) of ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


# -- entry points --------------------------------------------------------------------------------
def run_phase(
    cfg: PhaseConfig,
    sites: Sequence[SiteSettings],
    *,
    engine: Engine = "simulation",
    task: FlowerTask | None = None,
    deployment: Deployment | None = None,
) -> PhaseResult:
    """Run (or resume) one phase; returns best weights, best round and per-round history.

    ``task``: the site task for the simulation engine (default: securefed's DynUNet). In the
    deployment engine each SuperNode uses its own (``$SECUREFED_FLOWER_TASK`` or the default).
    """
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    if engine == "simulation":
        _run_simulation(cfg, sites, task)
    elif engine == "deployment":
        if deployment is None:
            raise ConfigError("the deployment engine needs a Deployment (SuperLink address...)")
        deployment.submit(cfg)
    else:
        raise ConfigError(f"engine {engine!r}: expected simulation or deployment")
    return _read_result(cfg)


def run_study_phases(
    loaded: Any,
    sites: Sequence[SiteSettings],
    assignments: Path,
    out_dir: Path,
    *,
    engine: Engine = "simulation",
    task: FlowerTask | None = None,
    deployment: Deployment | None = None,
    clusters: Sequence[int] | None = None,
) -> StudyPhases:
    """CFFL's federated phases: global FedAvg over every site with train cases, then for each
    cluster a federation of the sites holding that cluster's train cases, starting from the best
    global model. A cluster with fewer sites than ``training.min_sites_per_aggregate`` (or than 2
    under SecAgg+) keeps the global model, and the outcome says so."""
    t = loaded.protocol.training
    held_out = set(loaded.protocol.data.held_out_partitions)
    out_dir = Path(out_dir)
    own = {s.partition_id for s in sites}

    def eligible(counts: dict[int, int]) -> dict[int, int]:
        return {p: n for p, n in counts.items() if p not in held_out and p in own}

    global_sites = eligible(cluster_sites(assignments, None))
    g_cfg = phase_config(loaded, out_dir=out_dir / "global", sites=global_sites,
                         assignments=assignments)  # fmt: skip
    started_here = deployment is not None and engine == "deployment" and not deployment.processes
    try:
        if started_here:
            deployment.start(sites)
        global_result = run_phase(g_cfg, sites, engine=engine, task=task, deployment=deployment)
        study = StudyPhases(global_result=global_result)
        floor = max(t.min_sites_per_aggregate, 2 if t.aggregation == "secagg+" else 1)
        ids = clusters if clusters is not None else _cluster_ids(assignments)
        for cluster in ids:
            members = eligible(cluster_sites(assignments, cluster))
            if len(members) < floor:
                study.clusters[cluster] = ClusterOutcome(
                    cluster=cluster, sites=members, status="fallback-global",
                    reason=f"{len(members)} site(s) hold train cases of this cluster; "
                    f"at least {floor} are needed per aggregate",
                    weights_path=global_result.best_weights_path,
                )  # fmt: skip
                continue
            c_cfg = phase_config(
                loaded, out_dir=out_dir / f"cluster-{cluster}", sites=members,
                assignments=assignments, cluster=cluster,
                initial_weights=global_result.best_weights_path,
            )  # fmt: skip
            result = run_phase(c_cfg, sites, engine=engine, task=task, deployment=deployment)
            study.clusters[cluster] = ClusterOutcome(
                cluster=cluster, sites=members, status="finetuned",
                reason=f"best round {result.best_round} of {c_cfg.rounds}",
                weights_path=result.best_weights_path, result=result,
            )  # fmt: skip
        return study
    finally:
        if started_here:
            deployment.stop()


def _cluster_ids(assignments: Path) -> list[int]:
    import csv

    with Path(assignments).open(newline="", encoding="utf-8") as fh:
        return sorted({int(row["cluster"]) for row in csv.DictReader(fh)})


__all__ += ["TASK_ENV"]
