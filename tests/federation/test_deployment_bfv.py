"""Homomorphic aggregation in the deployment engine on loopback: the decrypting site deals the
study's BFV key with `securefed site he-key deal`, the other sites open their copies with `site
he-key open`, the coordinator gets the keyless aggregator context, and a bfv phase runs through
a real TLS SuperLink and the sites' own SuperNodes (`site supernode`), decrypted once by the
decryptor and equal to plain FedAvg up to the fixed-point step."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import tomli_w
from support.deployment import groups_alive, loopback_deployment
from support.flower import make_task, write_assignments, write_protocol
from support.trust import trusted_site_configs
from typer.testing import CliRunner

from securefed.cli import app
from securefed.crypto import generate_keys, write_keys
from securefed.crypto.bfv import load_aggregator_context
from securefed.crypto.node_key import new_node_key
from securefed.federation.config import SiteSettings
from securefed.federation.deployment import LocalSite
from securefed.federation.he_round import DECRYPTED_FILE
from securefed.federation.phase import phase_config, run_phase
from securefed.federation.site_executor import app_hash
from securefed.protocol import load_protocol

SITES = (1, 2, 3)


def _bfv_study(tmp_path: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """A signed bfv protocol pinning each site's node key and site keys (for the dealing)."""
    proto = write_protocol(tmp_path, aggregation="bfv", rounds=1, timeout=150)
    data = tomllib.loads(proto.read_text())
    node_keys, sites = {}, []
    for p in SITES:
        sid = f"site-{p}"
        node, _, fp = new_node_key(tmp_path / "nodes" / sid)
        node_keys[sid] = node
        keys = generate_keys("site", sid)
        write_keys(keys, tmp_path / "keys" / sid)
        sites.append({"id": sid, "partition_id": p, "node_key": fp,
                      "signing_key": keys.public.signing_fingerprint,
                      "encryption_key": keys.public.encryption_fingerprint})  # fmt: skip
    # A SuperNode runs only a signed 'deployment' protocol: every party pinned by key.
    server, board = generate_keys("server", "server"), generate_keys("governance", "board")
    write_keys(server, tmp_path / "server")
    data["study"]["mode"] = "deployment"
    data["sites"] = sites
    data["server"] = {"id": "server", "signing_key": server.public.signing_fingerprint,
                      "encryption_key": server.public.encryption_fingerprint}  # fmt: skip
    data["homomorphic"] = {**data.get("homomorphic", {}), "decryptor": "site-1"}
    governance = data.setdefault("governance", {})
    governance["approved_apps"] = [app_hash()]
    governance["signing_key"] = board.public.signing_fingerprint
    proto.write_text(tomli_w.dumps(data))
    configs = trusted_site_configs(
        tmp_path / "configs", proto, [f"site-{p}" for p in SITES],
        tmp_path / "server" / "server.pub.json", board=board, max_total_epsilon=1.0,
        min_sites_per_aggregate=2, require_dp_training=False, require_version_pin=False,
        forbidden_release_modes=(), required_aggregation="secure",
    )  # fmt: skip
    return proto, configs, node_keys


def _deal_keys(tmp_path: Path, proto: Path, configs: dict[str, Path]) -> Path:
    """The sites' dealing with the CLI; returns the coordinator's aggregator context."""
    runner = CliRunner()
    public = tmp_path / "public"
    public.mkdir()
    for p in SITES:
        sid = f"site-{p}"
        (public / f"{sid}.pub.json").write_bytes(
            (tmp_path / "keys" / sid / f"{sid}.pub.json").read_bytes()
        )
    outbox = tmp_path / "outbox"
    res = runner.invoke(app, [
        "site", "he-key", "deal", str(proto), "--site-config", str(configs["site-1"]),
        "--key", str(tmp_path / "keys" / "site-1" / "site-1.key"), "--public-keys", str(public),
        "--state", str(tmp_path / "site-1"), "--out", str(outbox),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    for p in SITES[1:]:
        sid = f"site-{p}"
        res = runner.invoke(app, [
            "site", "he-key", "open", str(proto), "--envelope",
            str(outbox / f"{sid}.bfv-key.sealed"), "--site-config", str(configs[sid]),
            "--key", str(tmp_path / "keys" / sid / f"{sid}.key"), "--state", str(tmp_path / sid),
        ])  # fmt: skip
        assert res.exit_code == 0, res.output
    return outbox / "aggregator.ctx"


def test_bfv_phase_runs_in_a_loopback_deployment_with_dealt_keys(tmp_path) -> None:
    proto, configs, node_keys = _bfv_study(tmp_path)
    loaded = load_protocol(proto)
    layout = {p: [("train", 0)] * 2 + [("val", 0)] for p in SITES}
    local = []
    for p in SITES:
        sid = f"site-{p}"
        (tmp_path / sid).mkdir()
        asg = write_assignments(tmp_path / sid / "clusters.csv", layout)
        local.append(LocalSite(
            site_id=sid, protocol=proto, site_config=configs[sid], node_key=node_keys[sid],
            data_dir=tmp_path, work_dir=tmp_path / sid, assignments=asg, partition_id=p,
        ))  # fmt: skip
    context = _deal_keys(tmp_path, proto, configs)
    server = load_aggregator_context(context.read_bytes())
    assert not server._ctx.has_secret_key()
    assert not server._ctx.has_public_key()
    dep = loopback_deployment(tmp_path, local)
    plan = tmp_path / "site-1" / "clusters.csv"
    counts = {p: 2 for p in SITES}
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites=counts, assignments=plan,
                       he_context=context, decryptor=1)  # fmt: skip
    dep.start()
    try:
        he = run_phase(cfg, [], engine="deployment", deployment=dep)
    finally:
        stopped = dep.stop()
    assert not groups_alive(stopped), "leftover processes"
    assert he.best_round == 1
    assert he.history[0]["num_sites"] == 3
    # The decryptor decrypted the one sum of the round; no other site decrypted anything.
    decrypted = json.loads((tmp_path / "site-1" / DECRYPTED_FILE).read_text())
    assert decrypted == {"global/1": [1, 2, 3]}
    assert not any((tmp_path / f"site-{p}" / DECRYPTED_FILE).exists() for p in SITES[1:])
    # The same round in plain FedAvg (simulation, same sites and task): equal up to fixed point.
    (tmp_path / "plain").mkdir()
    plain_proto = write_protocol(tmp_path / "plain", aggregation="fedavg", rounds=1)
    plain = load_protocol(plain_proto)
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(plain_proto),
                          assignments=str(plan)) for p in SITES]  # fmt: skip
    avg = run_phase(phase_config(plain, out_dir=tmp_path / "plain" / "global", sites=counts,
                                 assignments=plan), sites, task=make_task())  # fmt: skip
    bound = loaded.protocol.secure_aggregation.clipping_range / (2**20 - 1)
    for a, b in zip(he.best_weights, avg.best_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=bound + 1e-6)
