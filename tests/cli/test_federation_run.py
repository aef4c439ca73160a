"""`securefed federation run`: the coordinator's refusals before anything is sent (a contract:
its options and exit codes). Keys that are not the protocol's pins, a missing study CA, a
plaintext connection under a deployment protocol: each exits non-zero naming the file or option,
without contacting a SuperLink (127.0.0.1:9 answers nothing)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.deployment import study
from typer.testing import CliRunner

from securefed.cli import app
from securefed.crypto import generate_keys, write_keys

runner = CliRunner()


@pytest.fixture
def material(tmp_path: Path) -> tuple[Path, Path]:
    proto, _, _ = study(tmp_path, n_sites=3)
    return proto, tmp_path / "keys"


def _run(proto: Path, keys: Path, out: Path, *extra: str) -> tuple[int, str]:
    res = runner.invoke(app, ["federation", "run", str(proto), "--superlink", "127.0.0.1:9",
                              "--out", str(out), "--server-key", str(keys / "server.key"),
                              "--keys", str(keys), *extra])  # fmt: skip
    return res.exit_code, res.output.replace("\n", "")  # rich wraps long lines


def test_a_deployment_protocol_needs_the_study_ca(material: tuple[Path, Path], tmp_path: Path):
    proto, keys = material
    code, out = _run(proto, keys, tmp_path / "out")
    assert code == 2 and "--ca-cert is required" in out
    code, out = _run(proto, keys, tmp_path / "out", "--insecure")
    assert code == 2 and "--insecure is refused" in out
    assert not (tmp_path / "out" / "coordinator" / "nodes.json").exists(), "nothing registered"


def test_site_keys_must_be_the_protocols_pins(material: tuple[Path, Path], tmp_path: Path):
    proto, keys = material
    swapped = tmp_path / "swapped"
    shutil.copytree(keys, swapped)
    shutil.copyfile(keys / "site-2.pub.json", swapped / "site-1.pub.json")
    code, out = _run(proto, swapped, tmp_path / "out", "--ca-cert", str(tmp_path / "ca.pem"))
    assert code == 2 and "site-1.pub.json" in out and "pins" in out


def test_the_server_key_must_be_the_protocols(material: tuple[Path, Path], tmp_path: Path):
    proto, keys = material
    other = tmp_path / "other"
    write_keys(generate_keys("server", "server"), other)
    for pub in keys.glob("site-*.pub.json"):
        shutil.copyfile(pub, other / pub.name)
    code, out = _run(proto, other, tmp_path / "out", "--ca-cert", str(tmp_path / "ca.pem"))
    assert code != 0 and "server.encryption_key" in out
