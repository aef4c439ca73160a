"""A hospital's SuperNode, started the way its governance approved (``securefed site supernode``).

Before anything is started the site accepts the protocol with its own trust and policy, and
refuses to run without: a signed protocol of study.mode 'deployment' (an unsigned or simulation
protocol is refused, whatever the site's policy allows a simulation); TLS to the SuperLink,
verified against the study CA (there is no insecure option); its SuperNode authentication key
(Flower node authentication), the one the protocol pins for this site (``[[sites]].node_key``);
and at least one app bundle hash approved in the signed protocol (``governance.approved_apps``).
Then it starts ``flower-supernode --isolation process`` (Fleet API over TLS, node key, a random
SuperExec secret shared with no one else; through securefed.federation.flower_supernode, which
makes the idle SuperNode poll the SuperLink every 0.25 s instead of 3 s) and serves the
SuperNode's tasks with securefed's own executor (securefed.federation.site_executor), which
refuses any unapproved bundle before installing it and keeps torch loaded between messages.

Everything the site reads comes from its own command line and configuration; the server
chooses no path. Tests: ``tests/federation/test_supernode.py`` (refusals),
``tests/federation/test_deployment.py`` (loopback SuperLink and SuperNodes).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from securefed.errors import ConfigError, SiteTrustError, TrainingError
from securefed.federation.config import SiteSettings
from securefed.federation.deployment import flower_env
from securefed.federation.site_executor import SiteExecutor
from securefed.federation.site_status import ANSI, CONNECTION_STATE, connection_line
from securefed.fileio import write_exclusive

__all__ = ["SiteNode", "prepare_site_node"]


@dataclass(frozen=True)
class SiteNode:
    """Everything checked; ready to start. ``approved``: the protocol's approved app hashes."""

    site: SiteSettings
    site_id: str
    protocol_hash: str
    superlink: str
    ca_cert: Path
    node_key: Path
    approved: tuple[str, ...]
    runtime_port: int
    work_dir: Path

    @property
    def flwr_home(self) -> Path:
        return self.work_dir / "flwr-home"

    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)

    def _secret(self) -> tuple[Path, bytes]:
        """A fresh SuperExec secret for this start (mode 0600)."""
        secret = secrets.token_bytes(32)
        path = self.work_dir / f"superexec-{os.getpid()}.secret"
        path.unlink(missing_ok=True)
        write_exclusive(path, secret, mode=0o600)
        return path, secret

    def serve(
        self,
        stop: threading.Event | None = None,
        log_path: Path | None = None,
        say: Callable[[str], None] | None = None,
    ) -> int | None:
        """Start the SuperNode and serve its tasks until ``stop`` is set, SIGTERM/SIGINT arrives
        or the SuperNode exits (then TrainingError naming its exit code). ``say`` receives the
        SuperNode's connection state as it changes (its log lines about connecting, retries and
        refusals, without colour codes). Returns the signal that stopped it (None: ``stop``)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        os.environ.update({k: v for k, v in self.env().items() if k.startswith("FLWR_")})
        secret_path, secret = self._secret()
        args = [
            # Flower's flower-supernode, polling every 0.25 s while idle (not 3 s)
            sys.executable, "-m", "securefed.federation.flower_supernode",
            "--root-certificates", str(self.ca_cert),
            "--superlink", self.superlink,
            "--auth-supernode-private-key", str(self.node_key),
            "--isolation", "process",
            "--host", "127.0.0.1", "--port", str(self.runtime_port),
            "--superexec-auth-secret-file", str(secret_path),
            "--node-config", self.site.to_node_config(),
        ]  # fmt: skip
        log = (log_path or self.work_dir / "supernode.log").open("ab")
        node = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                start_new_session=True)  # fmt: skip
        stop = stop or threading.Event()
        received: list[int] = []

        def _stop(signum: int, *_: object) -> None:
            received.append(signum)
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
        executor = SiteExecutor(
            f"127.0.0.1:{self.runtime_port}", self.approved, secret, on_refused=self._audit_refusal
        )
        worker = threading.Thread(target=_serve_until, args=(executor, stop, node), daemon=True)
        if say is not None:
            threading.Thread(target=_follow, args=(Path(log.name), stop, say), daemon=True).start()
        try:
            _wait_runtime_api(self.runtime_port, node)
            worker.start()
            while not stop.is_set() and node.poll() is None:
                time.sleep(0.2)
            if node.poll() is not None and not stop.is_set():
                raise TrainingError(_exit_reason(self.site_id, node.returncode, Path(log.name)))
        finally:
            stop.set()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.pid, signal.SIGKILL)
            worker.join(timeout=5)
            log.close()
            secret_path.unlink(missing_ok=True)
        return received[0] if received else None

    def _audit_refusal(self, fab: str, run_id: int) -> None:
        from securefed.trust.audit_log import AuditLog

        folder = self.site.ledger_dir or self.site.work_dir or str(self.work_dir)
        AuditLog(Path(folder), self.site_id, self.protocol_hash).record(
            "app-refused", app=fab, run=run_id
        )


def _follow(log: Path, stop: threading.Event, say: Callable[[str], None]) -> None:
    """Pass the SuperNode log's connection-state lines to ``say`` as they are written."""
    with contextlib.suppress(OSError), log.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        while not stop.is_set():
            line = fh.readline()
            if not line:
                time.sleep(0.5)
                continue
            text = ANSI.sub("", line.decode("utf-8", "replace")).strip()
            if text and CONNECTION_STATE.search(text):
                say(connection_line(text))


def _exit_reason(site_id: str, returncode: int, log: Path) -> str:
    """Why the SuperNode exited, from Flower's exit code in its log."""

    codes = re.findall(r"Exit Code: (\d+)", log.read_text(errors="replace"))
    code = codes[-1] if codes else "?"
    why = {
        "305": "the SuperLink refused to activate this node: its node key is not registered "
        "with the SuperLink (ask the coordinator to register node.pub), or TLS failed",
    }.get(code, "see the log")
    return (
        f"{site_id}: flower-supernode exited ({returncode}, Flower exit code {code}): {why}; {log}"
    )


def _serve_until(executor: SiteExecutor, stop: threading.Event,
                 node: subprocess.Popen[bytes]) -> None:  # fmt: skip
    while not stop.is_set() and node.poll() is None:
        try:
            executor.serve(stop)
        except Exception:  # the Runtime API went away (SuperNode restarting): retry
            time.sleep(1.0)


def _wait_runtime_api(port: int, node: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.poll() is not None:
            return  # the caller reports the exit
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise TrainingError(f"flower-supernode: Runtime API not up on 127.0.0.1:{port}")


def prepare_site_node(
    protocol: Path,
    site_config: Path,
    *,
    superlink: str,
    ca_cert: Path | None,
    node_key: Path | None,
    data_dir: Path,
    work_dir: Path,
    assignments: Path | None = None,
    partitions: Path | None = None,
    device: str = "cpu",
    runtime_port: int = 9094,
) -> SiteNode:
    """Check everything a site must check before its SuperNode starts (nothing is started).

    SiteTrustError (exit 3): the protocol is not accepted by the site's trust and policy, is
    unsigned (whatever policy.allow_unsigned_simulation says) or of study.mode 'simulation', it
    approves no app bundle, or pins another node key for this site (or none), or pins a signing
    key for this site that SITE.toml's ``site.key`` does not hold (none: refused under secagg+).
    ConfigError (exit 2): no CA certificate (TLS is mandatory), an unreadable one, a bad address.
    KeyError_ (exit 2): the node key is missing, loose or not ECDSA P-384."""
    from securefed.crypto.node_key import check_node_private_key
    from securefed.crypto.tls import check_ca_certificate
    from securefed.trust import load_site_config, verify_for_site
    from securefed.trust.site_key import site_signing_key

    config = load_site_config(site_config)
    accepted = verify_for_site(protocol, config)
    p = accepted.loaded.protocol
    site_id = config.site.id
    if accepted.unsigned or not accepted.signers:
        raise SiteTrustError(
            f"{protocol}: unsigned; a SuperNode runs only a protocol signed by the site's trusted "
            "governance keys (policy.allow_unsigned_simulation does not apply to `site "
            "supernode`: whoever hands over an unsigned file would choose the approved app "
            "bundles); refusing"
        )
    if p.is_simulation:
        raise SiteTrustError(
            f"{protocol}: study.mode is 'simulation'; a SuperNode runs only a 'deployment' "
            "protocol (every party pinned by key, no unsafe option); refusing"
        )
    partition = p.partition_of_site(site_id)
    if partition is None:  # verify_for_site already refuses this; keep mypy and readers sure
        raise SiteTrustError(f"{protocol}: {site_id} is not a site of this protocol")
    if not p.governance.approved_apps:
        raise SiteTrustError(
            f"{protocol}: governance.approved_apps is empty: the protocol approves no app bundle, "
            "so the site would run whatever the coordinator sends; refusing "
            "(`securefed protocol app-hash` prints the hash to approve)"
        )
    host, sep, port = superlink.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--superlink {superlink!r}: expected HOST:PORT")
    if ca_cert is None:
        raise ConfigError(
            "--ca-cert is required: a site connects to the SuperLink over TLS only, verified "
            "against the study CA (docs/deployment.md)"
        )
    check_ca_certificate(ca_cert)
    if not Path(data_dir).is_dir():
        raise ConfigError(f"--data-dir {data_dir}: no such folder (this site's cases)")
    if node_key is None:
        raise ConfigError(
            "--node-key is required: the SuperNode authenticates to the SuperLink with the key "
            "the protocol pins for this site (`securefed site node-key`)"
        )
    fp = check_node_private_key(node_key)
    spec = next(s for s in p.sites if s.id == site_id) if p.sites else None
    pinned = spec.node_key if spec is not None else None
    if pinned is None:
        raise SiteTrustError(
            f"{protocol}: sites.{site_id}.node_key is not set: a deployment protocol pins each "
            "site's SuperNode key; refusing"
        )
    if pinned != fp:
        raise SiteTrustError(
            f"{node_key}: this node key ({fp}) is not the one the protocol pins for {site_id} "
            f"({pinned}); refusing"
        )
    # the key that signs the site's SecAgg+ keys and ledger heads (the protocol pins it):
    # checked before start; SecAgg+ cannot run without it
    site_signing_key(config, site_config, p, required=p.training.aggregation == "secagg+")
    site = SiteSettings(
        partition_id=partition,
        data_dir=str(data_dir),
        protocol=str(protocol),
        work_dir=str(work_dir),
        assignments=str(assignments) if assignments else "",
        device=device,
        ledger_dir=config.site.ledger_dir or "",
        partitions=str(partitions) if partitions else "",
        site_config=str(site_config),
    )
    return SiteNode(
        site=site, site_id=site_id, protocol_hash=accepted.loaded.sha256, superlink=superlink,
        ca_cert=Path(ca_cert), node_key=Path(node_key), approved=p.governance.approved_apps,
        runtime_port=runtime_port, work_dir=Path(work_dir),
    )  # fmt: skip
