"""Flower's deployment engine: a SuperLink and one SuperNode per site (started here for loopback
tests and single-host pilots, or already running at the hospitals), and ``flwr run`` of the
securefed app for each phase. Processes started here run in their own process group and are
stopped as a group.

With node authentication (``node_auth``) the SuperLink admits only SuperNodes whose public key
the coordinator registered (``flwr supernode register``); each registration returns the node id
that the key will authenticate as, and the phases' run config carries that map
(``node-sites``), so the ServerApp takes a site's identity from its key, not from the partition
id it claims. Local sites are started through the site's own launcher (``securefed site
supernode``), the same command a hospital runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from securefed.errors import ConfigError, TrainingError
from securefed.federation.app import app_dir
from securefed.federation.config import PhaseConfig, SiteSettings
from securefed.fileio import read_json

__all__ = ["Deployment", "LocalSite", "flower_env"]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of Flower processes started here: this interpreter's scripts first on
    PATH, a per-party FLWR_HOME, no telemetry, no runtime dependency installation (it would pull
    a CUDA torch), no update check."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
    )
    return env


@dataclass(frozen=True)
class LocalSite:
    """A site's SuperNode started on this machine with ``securefed site supernode`` (loopback
    tests and single-host pilots). ``node_key``: its node.key (node.pub beside it is what the
    coordinator registers); ``register=False`` leaves it unregistered (a node the SuperLink must
    refuse); ``command_prefix`` starts its launcher elsewhere (the pilot: in the site's own
    network namespace)."""

    site_id: str
    protocol: Path
    site_config: Path
    node_key: Path
    data_dir: Path
    work_dir: Path
    assignments: Path | None = None
    partition_id: int = -1
    register: bool = True
    command_prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS): its own network


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
    app_dir: Path = field(default_factory=app_dir)
    supernode_env: dict[str, str] = field(default_factory=dict)
    node_auth: bool = True
    local_sites: list[LocalSite] = field(default_factory=list)
    node_sites: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    startup_timeout_s: float = 60.0
    run_timeout_s: float = 1800.0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    superlink: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        # Flower's connection file needs absolute paths (a relative --ca-cert was refused by
        # `flwr supernode register`: found by following docs/deployment.md); so do the
        # processes started with another working folder.
        for name in ("work_dir", "ca_cert", "server_cert", "server_key"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value).absolute())

    @property
    def flwr_home(self) -> Path:
        return self.work_dir / "flwr-home"

    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)

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

    def _spawn(
        self, args: list[str], log_name: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
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

    def start(self, sites: Sequence[SiteSettings] = ()) -> None:
        """Start the SuperLink and the ``local_sites`` (``start_local`` only); ``sites`` is kept
        for the callers' symmetry (remote sites start their own SuperNodes)."""
        if not self.start_local:
            return
        # A SuperLink started here is fresh: it knows none of the registrations a previous one
        # held (a resumed pilot), so every node key is registered again.
        (self.work_dir / "nodes.json").unlink(missing_ok=True)
        self.node_sites.clear()
        env = self.env()
        bindir = Path(sys.executable).parent
        auth = ["--enable-supernode-auth"] if self.node_auth else []
        self.superlink = self._spawn(
            [str(bindir / "flower-superlink"), *self._tls_args(True), *auth,
             "--disable-runtime-dependency-installation",
             "--host", self.address, "--port", str(self.port)],
            "superlink.log", env,
        )  # fmt: skip
        _wait_port(self.address, self.port, self.startup_timeout_s, self.superlink)
        node_env = dict(env, **self.supernode_env)
        for i, site in enumerate(self.local_sites):
            if self.node_auth and site.register:
                nid = self.register_node(site.node_key.with_name("node.pub"))
                self.node_sites[nid] = site.partition_id
            args = [
                str(bindir / "securefed"), "site", "supernode", str(site.protocol),
                "--site-config", str(site.site_config),
                "--superlink", f"{self.address}:{self.port}",
                "--data-dir", str(site.data_dir), "--work-dir", str(site.work_dir),
                "--node-key", str(site.node_key),
                "--runtime-port", str(self.port + 10 + i),
            ]  # fmt: skip
            if self.ca_cert is not None:
                args += ["--ca-cert", str(self.ca_cert)]
            if site.assignments is not None:
                args += ["--assignments", str(site.assignments)]
            self._spawn([*site.command_prefix, *args], f"site-{site.site_id}.log", node_env)

    def register_node(self, public_key: Path) -> int:
        """Register a SuperNode's public key with the SuperLink (Flower's Control API) and
        return the node id it authenticates as. Registrations are kept in
        ``work_dir/nodes.json`` by key fingerprint, so a rerun reuses them."""
        from securefed.fileio import write_json_atomic

        registry = self.work_dir / "nodes.json"
        known = read_json(registry) if registry.is_file() else {}
        key_text = Path(public_key).read_text(encoding="utf-8").strip()
        if key_text in known:
            return int(known[key_text])
        self.write_connection()
        bindir = Path(sys.executable).parent
        proc = subprocess.run(
            [str(bindir / "flwr"), "supernode", "register", str(public_key), "securefed",
             "--format", "json"],
            env=self.env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        text = proc.stdout
        try:
            node_id = int(json.loads(text[text.index("{") : text.rindex("}") + 1])["node-id"])
        except (ValueError, KeyError) as exc:
            raise TrainingError(
                f"flwr supernode register {public_key} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-600:]}"
            ) from exc
        known[key_text] = node_id
        write_json_atomic(registry, known)
        return node_id

    def stop(self) -> list[int]:
        """Stop every process started here with its whole process group (each was started in a
        new session): SIGTERM, then SIGKILL after 10 s. Returns the group ids."""
        groups = [proc.pid for proc in reversed(self.processes)]
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for pgid in groups:  # children that ignored SIGTERM, or outlived their leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.processes.clear()
        self.superlink = None
        return groups

    def submit(self, cfg: PhaseConfig) -> None:
        """``flwr run`` the app with the phase's run config, then wait for the server's state."""
        self.write_connection()
        overrides = []
        run_config = cfg.to_run_config()
        if self.node_sites:
            run_config["node-sites"] = ",".join(f"{n}:{p}" for n, p in self.node_sites.items())
        for key, value in run_config.items():
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
            link = self.superlink
            if link is not None and link.poll() is not None:
                raise TrainingError(f"{cfg.name}: the SuperLink exited ({link.returncode})")
            time.sleep(0.5)
        raise TrainingError(f"{cfg.name}: no result within {self.run_timeout_s:g} s")


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
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
