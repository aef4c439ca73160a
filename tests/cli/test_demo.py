"""`securefed demo --protocol`: the protocol is resolved and parsed before anything is
synthesised (a typo used to cost ~45 s of synthesis before the error)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from securefed.cli import app
from securefed.protocol.shipped import shipped_protocols

runner = CliRunner()


@pytest.fixture
def no_synthesis(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("synthesised before the protocol was checked")

    monkeypatch.setattr("securefed.data.synth.synthesize", refuse)


def test_an_unknown_protocol_name_fails_first_listing_the_shipped_ones(
    tmp_path: Path, no_synthesis: None
) -> None:
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(out), "--protocol", "demo-local"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2, said
    assert "--protocol 'demo-local': neither a protocol file nor the name of a shipped" in said
    assert "did you mean demo-local-dp?" in said
    assert all(name in said for name in shipped_protocols())
    assert not out.exists()


def test_an_invalid_or_deployment_protocol_file_fails_first(
    tmp_path: Path, no_synthesis: None
) -> None:
    out = tmp_path / "demo"
    broken = tmp_path / "broken.toml"
    broken.write_text('schema_version = 1\n[study]\nname = "t"\nmode = "simulation"\n'
                      "[privacy]\ntotal_epsilon = 1.0\n[training]\nglobal_round = 3\n")  # fmt: skip
    res = runner.invoke(app, ["demo", "--out", str(out), "--protocol", str(broken)])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "training.global_round: unknown field" in said, said
    deployment = (
        shipped_protocols()["demo"]
        .read_text()
        .replace('mode = "simulation"', 'mode = "deployment"')
    )
    (tmp_path / "deploy.toml").write_text(deployment)
    res = runner.invoke(
        app, ["demo", "--out", str(out), "--protocol", str(tmp_path / "deploy.toml")]
    )
    assert res.exit_code == 2, res.output
    assert not out.exists()
