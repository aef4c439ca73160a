"""The deployment engine on loopback, as hospitals run it: a real SuperLink (TLS with a CA and
server certificate made by openssl, SuperNode authentication on) and real SuperNodes started by
each site's own launcher (`securefed site supernode`: protocol accepted by the site's trust and
policy, node key pinned by the protocol, only approved app bundles). One test shows a tiny
SecAgg+ phase through `flwr run` and each refusal the governance issue names: an unapproved app
bundle (refused by every site before installing it, logged in its audit log), an unregistered
node, a plaintext connection, a protocol the site's own policy does not accept (its launcher
exits 3 before starting anything); every process started is stopped (no leftover pid)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.deployment import groups_alive, loopback_deployment, study
from support.flower import write_assignments

from securefed.errors import SecurefedError
from securefed.federation.deployment import LocalSite
from securefed.federation.phase import phase_config, run_phase
from securefed.federation.site_executor import app_hash
from securefed.protocol import load_protocol


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_loopback_deployment_runs_and_refuses(tmp_path):
    proto, configs, node_keys = study(tmp_path, n_sites=5)
    loaded = load_protocol(proto)
    # site-5's own policy allows less than the protocol spends: its launcher must refuse.
    strict = tomllib.loads(configs["site-5"].read_text())
    strict["policy"]["max_total_epsilon"] = 0.5
    strict["policy"]["allow_plain_stages"] = False  # the study trains without DP: epsilon inf
    configs["site-5"].write_text(tomli_w.dumps(strict))
    layout = {p: [("train", 0)] * 2 + [("val", 0)] for p in (1, 2, 3)}
    local = []
    for p in (1, 2, 3, 4, 5):
        sid = f"site-{p}"
        (tmp_path / sid).mkdir()
        asg = write_assignments(tmp_path / sid / "clusters.csv", layout) if p < 4 else None
        local.append(LocalSite(
            site_id=sid, protocol=proto, site_config=configs[sid], node_key=node_keys[sid],
            data_dir=tmp_path, work_dir=tmp_path / sid, assignments=asg, partition_id=p,
            register=p < 4,  # site-4's key is never registered: the SuperLink refuses it
        ))  # fmt: skip
    dep = loopback_deployment(tmp_path, local)
    sites_123 = {1: 2, 2: 2, 3: 2}
    plan = tmp_path / "site-1" / "clusters.csv"  # the coordinator's plan (same rows)
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites=sites_123, assignments=plan)
    dep.start()
    started = [p.pid for p in dep.processes]
    try:
        # The site whose policy does not accept the protocol: refused before anything starts.
        site5 = dep.processes[-1]
        assert _wait_exit(site5, 120) == 3
        log5 = " ".join((tmp_path / "deploy" / "logs" / "site-site-5.log").read_text().split())
        assert "max_total_epsilon" in log5
        assert not (tmp_path / "site-5" / "flwr-home").exists()
        # The unregistered node: its SuperLink connection is refused, its launcher exits.
        site4 = dep.processes[-2]
        assert _wait_exit(site4, 120) not in (0, None)
        log4 = " ".join((tmp_path / "deploy" / "logs" / "site-site-4.log").read_text().split())
        assert "Flower exit code 305" in log4
        assert "node key is not registered" in log4
        # A plaintext SuperNode (--insecure) never reaches the TLS SuperLink.
        bindir = Path(sys.executable).parent
        plain = subprocess.Popen(
            [str(bindir / "flower-supernode"), "--insecure", "--max-retries", "1",
             "--superlink", f"127.0.0.1:{dep.port}", "--port", str(dep.port + 40),
             "--auth-supernode-private-key", str(node_keys["site-4"])],
            env=dep.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        assert _wait_exit(plain, 120) not in (0, None)

        result = run_phase(cfg, [], engine="deployment", deployment=dep)
        assert result.best_round == 1
        assert result.history[0]["num_sites"] == 3
        # The registered nodes, and only they, served the phase (identity from their key).
        assert len(dep.node_sites) == 3
        assert sorted(dep.node_sites.values()) == [1, 2, 3]

        # An app bundle the protocol does not approve: every site refuses it before install.
        rogue = tmp_path / "rogue-app"
        shutil.copytree(dep.app_dir, rogue)
        pyproject = rogue / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace("seed = 0", "seed = 1"))
        dep.app_dir = rogue
        bad = phase_config(loaded, out_dir=tmp_path / "rogue", sites=sites_123, assignments=plan)
        bad = type(bad)(**{**bad.__dict__, "node_wait_s": 20.0})
        with pytest.raises(SecurefedError):
            run_phase(bad, [], engine="deployment", deployment=dep)
        state = json.loads((tmp_path / "rogue" / "state.json").read_text())
        assert state["status"] == "failed"
        assert "is not approved" in state["error"]
    finally:
        stopped = dep.stop()
    assert len(started) == 6
    assert set(started) <= set(stopped)
    assert not groups_alive(stopped), "leftover processes"
    for p in (1, 2, 3):
        audit = (tmp_path / f"site-{p}" / "audit.jsonl").read_text()
        assert '"event":"app-refused"' in audit
        assert app_hash(rogue) in audit
        # What the site sent is in its egress log (the auditor's census reads it).
        egress = (tmp_path / f"site-{p}" / "egress.jsonl").read_text()
        assert '"kind": "flower-reply"' in egress
        assert "training/global/train" in egress
    link = (tmp_path / "deploy" / "logs" / "superlink.log").read_text()
    assert "insecure" not in link.lower()
