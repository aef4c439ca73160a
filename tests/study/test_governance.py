"""The study runner plays the board (securefed.study.governance): each simulated site gets the
policy the protocol asks for, and after issue 28 (item 11) that policy allows stages without DP
explicitly (`allow_plain_stages`), never through the protocol's declared total."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w
from support.study import tiny_protocol
from typer.testing import CliRunner

from securefed.cli import app


def test_the_runner_accepts_its_plain_protocol_and_rewrites_an_outdated_board_config(
    tiny_federation: Path, tmp_path: Path
) -> None:
    """The plain demo-shaped protocol (declares epsilon 8, releases features and trains without
    DP) runs under the board's own site configurations; a resumed run whose board-written
    site.toml predates `allow_plain_stages` gets the board's current configuration again
    instead of refusing its own protocol."""
    rundir = tmp_path / "run"
    args = ["run", str(tiny_protocol(tmp_path, baselines=("fedavg",))), "--data",
            str(tiny_federation), "--out", str(rundir), "--workers", "1"]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--stop-after", "features"])
    assert res.exit_code == 0, res.output
    config = rundir / "sites" / "site-1" / "site.toml"
    policy = tomllib.loads(config.read_text())["policy"]
    assert policy["allow_plain_stages"] is True
    assert policy["max_total_epsilon"] == 8.0
    # The configuration a run of an older securefed wrote: no allow_plain_stages (false).
    old = tomllib.loads(config.read_text())
    del old["policy"]["allow_plain_stages"]
    config.write_text(tomli_w.dumps(old))
    res = CliRunner().invoke(app, [*args, "--stop-after", "clustering"])
    assert res.exit_code == 0, res.output
    assert tomllib.loads(config.read_text())["policy"]["allow_plain_stages"] is True


def test_a_refused_protocol_leaves_every_sites_log_signed(
    tiny_federation: Path, tmp_path: Path
) -> None:
    """Issue 28, item 8 (a refusal leaves a signed head): a site that refuses the run's protocol
    (here its policy refuses stages without DP) logs `protocol-refused` and the run stops; every
    site's log is closed with its signed head, so each still verifies against its own key."""
    from support.trust import trusted_site_configs

    from securefed.crypto import generate_keys, write_keys

    protocol = tiny_protocol(tmp_path, baselines=("fedavg",))
    write_keys(generate_keys("server", "server"), tmp_path / "keys")
    configs = trusted_site_configs(
        tmp_path / "configs", protocol, ["site-1", "site-2", "site-3"],
        tmp_path / "keys" / "server.pub.json", max_total_epsilon=8.0,
        min_sites_per_aggregate=2, require_dp_training=False, require_version_pin=False,
        forbidden_release_modes=(), required_aggregation="any",
    )  # fmt: skip
    strict = tomllib.loads(configs["site-2"].read_text())
    strict["policy"]["allow_plain_stages"] = False
    configs["site-2"].write_text(tomli_w.dumps(strict))
    rundir = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(protocol), "--data", str(tiny_federation), "--out",
                                   str(rundir), "--site-configs", str(tmp_path / "configs"),
                                   "--stop-after", "features"])  # fmt: skip
    assert res.exit_code == 3, res.output
    assert "stage features: effective epsilon inf" in " ".join(res.output.split())
    for site in ("site-1", "site-2"):
        log = rundir / "sites" / site
        verified = CliRunner().invoke(app, ["audit", "verify", str(log), "--key",
                                            str(rundir / "keys" / f"{site}.pub.json")])  # fmt: skip
        assert verified.exit_code == 0, verified.output
    assert '"event":"protocol-refused"' in (rundir / "sites" / "site-2" / "audit.jsonl").read_text()
