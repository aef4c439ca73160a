"""`securefed federation coordinate` refuses, before contacting anything, what a coordinator
must not do: no TLS to a remote SuperLink, a malformed address, a protocol without sites."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.flower import write_protocol
from typer.testing import CliRunner

from securefed.cli import app
from securefed.errors import ConfigError
from securefed.protocol import load_protocol
from securefed.study.coordinate import coordinate_deployment


@pytest.mark.parametrize(
    ("superlink", "ca", "insecure", "message"),
    [
        ("fl.example.org:9093", None, False, "--ca-cert is required"),
        ("fl.example.org:9093", None, True, "only a loopback SuperLink"),
        ("fl.example.org", None, True, "HOST:PORT"),
        ("127.0.0.1:9093", "missing.pem", False, "file not found"),
        ("127.0.0.1:9093", "ca.pem", True, "not both"),
    ],
)
def test_refusals(tmp_path: Path, superlink, ca, insecure, message) -> None:
    loaded = load_protocol(write_protocol(tmp_path))
    (tmp_path / "ca.pem").write_text("not checked before the address")
    with pytest.raises(ConfigError, match=message):
        coordinate_deployment(
            loaded, tmp_path / "clusters.csv", tmp_path / "out", superlink=superlink,
            ca_cert=None if ca is None else tmp_path / ca, insecure=insecure,
        )  # fmt: skip


def test_protocol_without_sites_is_a_user_error(tmp_path: Path) -> None:
    proto = write_protocol(tmp_path)
    res = CliRunner().invoke(
        app,
        ["federation", "coordinate", str(proto), "--assignments", str(tmp_path / "c.csv"),
         "--out", str(tmp_path / "out"), "--superlink", "127.0.0.1:9093", "--insecure"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "[[sites]]" in res.output


def test_bfv_is_refused_for_a_deployment_until_its_key_dealing_exists(tmp_path: Path) -> None:
    loaded = load_protocol(write_protocol(tmp_path, aggregation="bfv"))
    with pytest.raises(ConfigError, match="simulation engine only"):
        coordinate_deployment(loaded, tmp_path / "c.csv", tmp_path / "out",
                              superlink="127.0.0.1:9093", ca_cert=None, insecure=True)  # fmt: skip
