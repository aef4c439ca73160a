"""A loopback deployment's material: a study CA and server certificate (openssl, the commands of
docs/deployment.md), and a signed protocol whose sites pin node keys and approve the installed
app bundle, with one site configuration per site."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import tomli_w

from securefed.crypto import generate_keys, write_keys
from securefed.crypto.node_key import new_node_key
from securefed.federation.deployment import Deployment, LocalSite
from securefed.federation.site_executor import app_hash
from support.flower import write_protocol
from support.trust import trusted_site_configs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def groups_alive(groups: list[int], wait_s: float = 10.0) -> list[int]:
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


def loopback_deployment(tmp_path: Path, local_sites: list[LocalSite]) -> Deployment:
    """A Deployment on loopback with TLS (fresh CA and server certificate) whose SuperNodes run
    the tests' stand-in task (support.flower:make_task)."""
    tests = Path(__file__).resolve().parents[1]
    ca, cert, key = make_tls(tmp_path / "tls")
    env = {
        "SECUREFED_FLOWER_TASK": "support.flower:make_task",
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    return Deployment(
        work_dir=tmp_path / "deploy", port=free_port(), ca_cert=ca, server_cert=cert,
        server_key=key, supernode_env=env, run_timeout_s=300, local_sites=local_sites,
    )  # fmt: skip


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


def study(
    tmp_path: Path,
    n_sites: int = 4,
    approve_app: bool = True,
    rounds: int = 1,
    mode: str = "deployment",
) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """A signed protocol (``mode``: a SuperNode runs only 'deployment') listing ``n_sites`` sites
    with their keys (site and server keys in ``tmp_path/keys``) and node keys, the installed
    app's hash approved; one site configuration per site trusting the board that signed it.
    Returns the protocol, the site configs and the node keys."""
    proto = write_protocol(tmp_path, aggregation="secagg+", rounds=rounds, timeout=150)
    data = tomllib.loads(proto.read_text())
    server, board = generate_keys("server", "server"), generate_keys("governance", "board")
    write_keys(server, tmp_path / "keys")
    node_keys, sites = {}, []
    for p in range(1, n_sites + 1):
        sid = f"site-{p}"
        key, _, fp = new_node_key(tmp_path / "nodes" / sid)
        node_keys[sid] = key
        site = generate_keys("site", sid)
        write_keys(site, tmp_path / "keys")
        sites.append({"id": sid, "partition_id": p, "node_key": fp,
                      "signing_key": site.public.signing_fingerprint,
                      "encryption_key": site.public.encryption_fingerprint})  # fmt: skip
    data["study"]["mode"] = mode
    data["sites"] = sites
    data["server"] = {"id": "server", "signing_key": server.public.signing_fingerprint,
                      "encryption_key": server.public.encryption_fingerprint}  # fmt: skip
    governance = data.setdefault("governance", {})
    governance["approved_apps"] = [app_hash()] if approve_app else []
    governance["signing_key"] = board.public.signing_fingerprint
    proto.write_text(tomli_w.dumps(data))
    configs = trusted_site_configs(
        tmp_path / "configs", proto, list(node_keys), tmp_path / "keys" / "server.pub.json",
        board=board, max_total_epsilon=1.0, min_sites_per_aggregate=2, require_dp_training=False,
        require_version_pin=False, forbidden_release_modes=(),
    )  # fmt: skip
    return proto, configs, node_keys
