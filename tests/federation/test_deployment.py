"""The deployment engine on loopback: a real SuperLink (TLS with a CA and server certificate made
by openssl) and 3 real SuperNodes, a tiny SecAgg+ phase through `flwr run`, and every process
started is stopped (no leftover pid)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.flower import write_assignments, write_protocol

from securefed.federation.config import SiteSettings
from securefed.federation.deployment import Deployment
from securefed.federation.phase import phase_config, run_phase
from securefed.protocol import load_protocol

TESTS = Path(__file__).resolve().parents[1]


def make_tls(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``host`` (the commands of docs/deployment.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = folder / "server.ext"
    ext.write_text(f"subjectAltName = IP:{host}, DNS:localhost\n"
                   "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\n"
                   "extendedKeyUsage = serverAuth\n")  # fmt: skip

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-sha256",
        "-days",
        "2",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-subj",
        "/CN=securefed test CA",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-sha256",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={host}",
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-sha256",
        "-extfile",
        str(ext),
    )
    # fmt: skip
    return ca, cert, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def _groups_alive(groups: list[int], wait_s: float = 10.0) -> list[int]:
    """Process groups (of those stopped) that still hold a process after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for pgid in groups:
            try:
                os.killpg(pgid, 0)
                alive.append(pgid)
            except ProcessLookupError:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_loopback_superlink_three_supernodes_tls(tmp_path):
    proto = write_protocol(tmp_path, aggregation="secagg+", rounds=1, timeout=150)
    loaded = load_protocol(proto)
    layout = {p: [("train", 0)] * 2 + [("val", 0)] for p in (1, 2, 3)}
    asg = write_assignments(tmp_path / "clusters.csv", layout)
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(proto),
                          assignments=str(asg), work_dir=str(tmp_path / f"site-{p}"))
             for p in layout]  # fmt: skip
    ca, cert, key = make_tls(tmp_path / "tls")
    env = {
        "SECUREFED_FLOWER_TASK": "support.flower:make_task",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    dep = Deployment(
        work_dir=tmp_path / "deploy",
        port=_free_port(),
        ca_cert=ca,
        server_cert=cert,
        server_key=key,
        supernode_env=env,
        run_timeout_s=300,
    )
    # fmt: skip
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites={1: 2, 2: 2, 3: 2},
                       assignments=asg)  # fmt: skip
    dep.start(sites)
    started = [p.pid for p in dep.processes]
    try:
        result = run_phase(cfg, sites, engine="deployment", deployment=dep)
    finally:
        stopped = dep.stop()
    assert len(started) == 4 and set(started) <= set(stopped)
    assert not _groups_alive(stopped), "leftover processes"
    assert result.best_round == 1 and result.history[0]["num_sites"] == 3
    assert result.history[0]["val"]["num_val"] == 3
    log = (tmp_path / "deploy" / "logs" / "superlink.log").read_text()
    assert "insecure" not in log.lower()
