"""`securefed site supernode` checks everything before it starts anything: the protocol accepted
by the site's trust and policy (exit 3), an approved app bundle (exit 3), TLS material (exit 2:
there is no insecure option), the node key pinned for this site (exit 2 missing or loose, 3 another
key). `site node-key`, `protocol app-hash`, and the coordinator's node-key and TLS refusals."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.deployment import make_tls, study
from typer.testing import CliRunner

from securefed.cli import app
from securefed.crypto.node_key import new_node_key, node_key_fingerprint
from securefed.errors import ConfigError
from securefed.federation.site_executor import app_hash
from securefed.protocol import load_protocol
from securefed.study.coordinate import coordinate_deployment

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, " ".join(res.output.split())


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    proto, configs, keys = study(tmp_path, n_sites=3)
    ca, _, _ = make_tls(tmp_path / "tls")
    return {"proto": proto, "config": configs["site-1"], "key": keys["site-1"], "ca": ca,
            "other_key": keys["site-2"], "tmp": tmp_path}  # fmt: skip


def _supernode(s: dict[str, Path], *extra: str, ca: bool = True, key: bool = True) -> list[str]:
    args = ["site", "supernode", str(s["proto"]), "--site-config", str(s["config"]),
            "--superlink", "127.0.0.1:9093", "--data-dir", str(s["tmp"]),
            "--work-dir", str(s["tmp"] / "w"), "--check-only"]  # fmt: skip
    if ca:
        args += ["--ca-cert", str(s["ca"])]
    if key:
        args += ["--node-key", str(s["key"])]
    return args + list(extra)


@needs_openssl
def test_accepted_site_passes_every_check(site) -> None:
    code, out = _run(*_supernode(site))
    assert code == 0, out
    assert "site-1: accepted sha256:" in out
    assert "1 approved app bundle(s)" in out


@needs_openssl
def test_a_missing_data_dir_fails_the_checks(site) -> None:
    args = _supernode(site)
    args[args.index("--data-dir") + 1] = str(site["tmp"] / "nope")
    code, out = _run(*args)
    assert code == 2
    assert "--data-dir" in out
    assert "no such folder" in out


@needs_openssl
def test_secagg_needs_the_sites_signing_key(site) -> None:
    """The protocol pins the site's signing key (it signs the site's SecAgg+ keys): a SITE.toml
    naming none is refused before anything starts, and so is another key."""
    import tomllib

    import tomli_w

    data = tomllib.loads(site["config"].read_text())
    data["site"].pop("key")
    site["config"].write_text(tomli_w.dumps(data))
    code, out = _run(*_supernode(site))
    assert code == 3
    assert "site.key names no private key" in out
    from securefed.crypto import generate_keys, write_keys

    write_keys(generate_keys("site", "site-1"), site["tmp"] / "other")
    data["site"]["key"] = str(site["tmp"] / "other" / "site-1.key")
    site["config"].write_text(tomli_w.dumps(data))
    code, out = _run(*_supernode(site))
    assert code == 3
    assert "is not the signing key the protocol pins" in out


@needs_openssl
def test_tls_is_mandatory(site) -> None:
    code, out = _run(*_supernode(site, ca=False))
    assert code == 2
    assert "--ca-cert is required" in out
    (site["tmp"] / "bad.pem").write_text("not a certificate")
    code, out = _run(*_supernode(site, ca=False), "--ca-cert", str(site["tmp"] / "bad.pem"))
    assert code == 2
    assert "not a PEM certificate" in out
    code, out = _run(*_supernode(site), "--insecure")
    assert code == 2  # no such option: a site cannot opt out of TLS


@needs_openssl
def test_node_key_missing_loose_or_not_the_pinned_one(site) -> None:
    code, out = _run(*_supernode(site, key=False))
    assert code == 2
    assert "--node-key is required" in out
    os.chmod(site["key"], 0o644)
    code, out = _run(*_supernode(site))
    assert code == 2
    assert "mode 0644" in out
    os.chmod(site["key"], 0o600)
    code, out = _run(*_supernode(site, key=False), "--node-key", str(site["other_key"]))
    assert code == 3
    assert "not the one the protocol pins for site-1" in out


@needs_openssl
def test_protocol_not_accepted_by_the_site_is_refused_before_starting(site) -> None:
    # The protocol edited after signing (its signature no longer covers it).
    text = site["proto"].read_text().replace("global_rounds = 1", "global_rounds = 2")
    site["proto"].write_text(text)
    code, out = _run(*_supernode(site))
    assert code == 3
    assert "signature" in out
    assert not (site["tmp"] / "w").exists()  # nothing started, nothing written


@needs_openssl
def test_a_protocol_without_approved_apps_is_refused(tmp_path: Path) -> None:
    proto, configs, keys = study(tmp_path, n_sites=3, approve_app=False)
    ca, _, _ = make_tls(tmp_path / "tls")
    s = {"proto": proto, "config": configs["site-1"], "key": keys["site-1"], "ca": ca,
         "tmp": tmp_path}  # fmt: skip
    code, out = _run(*_supernode(s))
    assert code == 3
    assert "approved_apps is empty" in out


@needs_openssl
def test_simulation_and_unsigned_protocols_are_refused_before_starting(tmp_path: Path) -> None:
    """Issue 28, item 9: whoever hands a site an unsigned simulation-mode protocol chose the
    approved app bundles. `site supernode` refuses it (exit 3, naming the field) even when the
    site's policy allows unsigned simulations, and refuses a signed simulation-mode protocol
    too; nothing is started or written."""
    proto, configs, keys = study(tmp_path, n_sites=3, mode="simulation")
    ca, _, _ = make_tls(tmp_path / "tls")
    s = {"proto": proto, "config": configs["site-1"], "key": keys["site-1"], "ca": ca,
         "tmp": tmp_path}  # fmt: skip
    code, out = _run(*_supernode(s))  # signed by the trusted board, but a simulation
    assert code == 3 and "study.mode is 'simulation'" in out, out
    # Unsigned, and the site's policy allows unsigned simulations (as `site verify` accepts).
    proto.with_name(proto.name + ".sig").unlink()
    config = tomllib.loads(configs["site-1"].read_text())
    config["policy"]["allow_unsigned_simulation"] = True
    configs["site-1"].write_text(tomli_w.dumps(config))
    assert _run("site", "verify", str(proto), "--site-config", str(configs["site-1"]))[0] == 0
    code, out = _run(*_supernode(s))
    assert code == 3 and "unsigned" in out and "allow_unsigned_simulation" in out, out
    assert not (tmp_path / "w").exists()  # nothing started, nothing written


def test_node_key_command_and_its_fingerprint(tmp_path: Path) -> None:
    code, out = _run("site", "node-key", "--out", str(tmp_path / "k"))
    assert code == 0, out
    fp = out.split()[-1]
    assert fp == node_key_fingerprint(tmp_path / "k" / "node.pub")
    assert oct((tmp_path / "k" / "node.key").stat().st_mode & 0o777) == "0o600"
    code, out = _run("site", "node-key", "--out", str(tmp_path / "k"))
    assert code == 2
    assert "never overwritten" in out


def test_app_hash_is_the_installed_bundle_and_changes_with_it(tmp_path: Path) -> None:
    code, out = _run("protocol", "app-hash")
    assert code == 0
    assert out.strip() == app_hash()
    from securefed.federation.app import app_dir

    copy = tmp_path / "app"
    shutil.copytree(app_dir(), copy)
    assert app_hash(copy) == app_hash()  # deterministic: depends on the files only
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("seed = 0", "seed = 1"))
    assert app_hash(copy) != app_hash()
    (copy / "evil.py").write_text("import os\n")  # code in the bundle changes the hash too
    pyproject.write_text(pyproject.read_text().replace("seed = 1", "seed = 0"))
    assert app_hash(copy) != app_hash()


def test_protocol_refuses_two_sites_with_one_node_key(tmp_path: Path) -> None:
    proto, _, _ = study(tmp_path, n_sites=3)
    data = tomllib.loads(proto.read_text())
    data["sites"][1]["node_key"] = data["sites"][0]["node_key"]
    proto.write_text(tomli_w.dumps(data))
    code, out = _run("protocol", "check", str(proto))
    assert code == 2
    assert "node keys must be unique" in out


def _deployment_protocol(tmp_path: Path) -> Path:
    proto, _, _ = study(tmp_path, n_sites=3)
    data = tomllib.loads(proto.read_text())
    from securefed.crypto import generate_keys

    data["study"]["mode"] = "deployment"
    for entry in data["sites"]:
        k = generate_keys("site", entry["id"])
        entry["signing_key"] = k.public.signing_fingerprint
        entry["encryption_key"] = k.public.encryption_fingerprint
    server, board = generate_keys("server", "server"), generate_keys("governance", "board")
    data["server"] = {"id": "server", "signing_key": server.public.signing_fingerprint,
                      "encryption_key": server.public.encryption_fingerprint}  # fmt: skip
    data["governance"]["signing_key"] = board.public.signing_fingerprint
    out = tmp_path / "deployment.toml"
    out.write_text(tomli_w.dumps(data))
    return out


def test_coordinator_refuses_plaintext_and_unpinned_node_keys(tmp_path: Path) -> None:
    loaded = load_protocol(_deployment_protocol(tmp_path))
    common = {"superlink": "127.0.0.1:9093"}
    with pytest.raises(ConfigError, match="refused for a 'deployment' protocol"):
        coordinate_deployment(loaded, tmp_path / "c.csv", tmp_path / "o", ca_cert=None,
                              insecure=True, **common)  # fmt: skip
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(ConfigError, match="--node-keys is required"):
        coordinate_deployment(loaded, tmp_path / "c.csv", tmp_path / "o",
                              ca_cert=tmp_path / "ca.pem", **common)  # fmt: skip
    keys = tmp_path / "pubs"
    for i, site_ in enumerate(loaded.protocol.sites):  # site-1 sends the wrong key
        _, pub, _ = new_node_key(tmp_path / "fresh" / site_.id)
        src = pub if i == 0 else tmp_path / "nodes" / site_.id / "node.pub"
        keys.mkdir(exist_ok=True)
        (keys / f"{site_.id}.pub").write_bytes(src.read_bytes())
    with pytest.raises(ConfigError, match="not the node key the protocol pins for site-1"):
        coordinate_deployment(loaded, tmp_path / "c.csv", tmp_path / "o",
                              ca_cert=tmp_path / "ca.pem", node_keys=keys, **common)  # fmt: skip


class _Grid:
    """A stand-in Grid: node ``nid`` answers get_properties claiming partition ``claims[nid]``."""

    def __init__(self, claims: dict[int, int], protocol_hash: str) -> None:
        self.claims, self.protocol_hash = claims, protocol_hash

    def get_node_ids(self) -> list[int]:
        return list(self.claims)

    def send_and_receive(self, msgs, timeout):  # noqa: ANN001 - Flower's Grid signature
        from flwr.app import Message
        from flwr.common import Code, GetPropertiesRes, Status

        from securefed.federation.flower_internals import recorddict_compat as compat

        for msg in msgs:
            nid = msg.metadata.dst_node_id
            res = GetPropertiesRes(
                Status(Code.OK, ""),
                {"partition-id": self.claims[nid], "protocol-hash": self.protocol_hash},
            )
            reply = Message(compat.getpropertiesres_to_recorddict(res), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = nid
            yield reply


def test_server_takes_identity_from_the_registered_key_not_the_claimed_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from securefed.errors import SiteTrustError

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what a ServerApp process has set
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    from securefed.federation.config import PhaseConfig
    from securefed.federation.discovery import discover_sites as _discover

    cfg = PhaseConfig(out_dir="x", sites="1,2", protocol_hash="sha256:" + "0" * 64, rounds=1,
                      lr=0.1, node_wait_s=0.0, node_sites="11:1,22:2")  # fmt: skip
    # Honest nodes: each claims the partition it was registered for.
    assert _discover(_Grid({11: 1, 22: 2}, cfg.protocol_hash), cfg) == {1: 11, 2: 22}
    # Node 33 was never registered but claims site 2 (node 22 is offline): refused.
    with pytest.raises(SiteTrustError, match=r"node\(s\) \[33\] claim site partition\(s\) \[2\]"):
        _discover(_Grid({11: 1, 33: 2}, cfg.protocol_hash), cfg)
    # Registered node 11 claims site 2's partition: refused too.
    with pytest.raises(SiteTrustError, match="not the nodes registered"):
        _discover(_Grid({11: 2}, cfg.protocol_hash), PhaseConfig(**{**cfg.__dict__,
                                                                    "sites": "2"}))  # fmt: skip
    with pytest.raises(ConfigError, match="node-id:partition-id"):
        PhaseConfig(**{**cfg.__dict__, "node_sites": "11-1"})
