"""`securefed site selftest`: the hostile-coordinator attacks against this installation, under a
site's own SITE.toml; every attack refused on the real ClientApp chain and NIfTI cases, and a
site runtime without its checks is caught (the selftest can fail)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from securefed.cli import app
from securefed.federation.selftest import ATTACKS
from securefed.study.selftest import run_selftest

runner = CliRunner()


@pytest.fixture(scope="module")
def site_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("selftest")
    keys = folder / "keys"
    assert runner.invoke(app, ["keys", "new", "--role", "governance", "--id", "gov",
                               "--out", str(keys)]).exit_code == 0  # fmt: skip
    out = folder / "SITE.toml"
    result = runner.invoke(app, ["site", "init", "--site-id", "hospital-a", "--trust",
                                 str(keys / "gov.pub.json"), "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_every_attack_is_refused_and_the_site_still_serves(site_toml: Path) -> None:
    report = run_selftest(site_toml, site_toml.parent / "work")
    names = [o.name for o in report.outcomes]
    assert names == [name for name, *_ in ATTACKS] + ["control"]
    assert report.all_refused, [o for o in report.outcomes if not o.refused]
    assert "board's policy" in report.policy_note  # the strictest policy refuses a plain study


def test_a_site_without_its_checks_fails_the_selftest(
    site_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instruction checks switched off: the lr, seed, round and steps attacks get answers."""
    import securefed.federation.client_app as client_app

    monkeypatch.setattr(client_app, "check_round_config", lambda p, sha, config: -1)
    report = run_selftest(site_toml, site_toml.parent / "work-broken")
    accepted = {o.name for o in report.outcomes if not o.refused}
    assert {"lr", "seed", "local-steps"} <= accepted
    assert not report.all_refused


def test_the_command_prints_one_line_per_attack_and_exits_by_the_outcome(site_toml: Path) -> None:
    result = runner.invoke(app, ["site", "selftest", "--site-config", str(site_toml),
                                 "--work", str(site_toml.parent / "work-cli")])  # fmt: skip
    assert result.exit_code == 0, result.output
    for name, *_ in ATTACKS:
        assert f"refused  {name}" in result.output
    missing = runner.invoke(app, ["site", "selftest", "--site-config",
                                  str(site_toml.parent / "nope.toml")])  # fmt: skip
    assert missing.exit_code == 2
