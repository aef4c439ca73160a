"""`securefed federation coordinate` refuses, before contacting anything, what a coordinator
must not do: no TLS to a remote SuperLink, a malformed address, a protocol without sites."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.flower import write_protocol
from typer.testing import CliRunner

from securefed.cli import app
from securefed.errors import ConfigError, SecurefedError
from securefed.protocol import load_protocol
from securefed.study.coordinate import _install_he_context, coordinate_deployment


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


def test_bfv_needs_the_dealers_keyless_aggregator_context(tmp_path: Path) -> None:
    """A bfv deployment runs with the context of `site he-key deal` (no key): without it, with a
    file holding the key, or with another study's context it is refused."""
    from securefed.crypto.bfv import make_key

    loaded = load_protocol(write_protocol(tmp_path, aggregation="bfv"))
    args = dict(superlink="127.0.0.1:9093", ca_cert=None, insecure=True)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="--he-context is required"):
        coordinate_deployment(loaded, tmp_path / "c.csv", out, **args)
    key = make_key()
    secret = tmp_path / "bfv.key"
    secret.write_bytes(key.to_bytes())
    with pytest.raises(SecurefedError, match="aggregator context"):
        coordinate_deployment(loaded, tmp_path / "c.csv", out, he_context=secret, **args)
    ctx = tmp_path / "aggregator.ctx"
    ctx.write_bytes(key.aggregator_bytes())
    with pytest.raises(ConfigError, match=r"\[\[sites\]\]"):  # a later check fails ...
        coordinate_deployment(loaded, tmp_path / "c.csv", out, he_context=ctx, **args)
    assert not (out / "he").exists()  # ... and nothing was written
    _install_he_context(ctx.read_bytes(), out)
    assert (out / "he" / "aggregator.ctx").read_bytes() == ctx.read_bytes()
    _install_he_context(ctx.read_bytes(), out)  # a resumed study brings the same context
    other = tmp_path / "other.ctx"
    other.write_bytes(make_key().aggregator_bytes())
    with pytest.raises(ConfigError, match="differs from the context this study started with"):
        _install_he_context(other.read_bytes(), out)
