"""`securefed site status`: the site at a glance from its own files (accepted protocol, ledger
spend and head, last round per phase, audit log, connection)."""

from __future__ import annotations

from pathlib import Path

from support.hostile import Federation
from support.trust import trusted_site_configs
from typer.testing import CliRunner

from securefed.cli import app
from securefed.crypto import generate_keys, write_keys


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_status_of_a_site_that_trained(tmp_path: Path) -> None:
    fed = Federation(tmp_path / "fed", aggregation="fedavg")
    assert not fed.fit(1, fed.honest_config(rnd=1)).has_error()
    write_keys(generate_keys("server", "server"), tmp_path / "keys")
    configs = trusted_site_configs(tmp_path / "configs", fed.protocol, ["site-1"],
                                   tmp_path / "keys" / "server.pub.json",
                                   require_dp_training=False, require_version_pin=False,
                                   min_sites_per_aggregate=2,
                                   forbidden_release_modes=(), required_aggregation="any",
                                   max_total_epsilon=float("inf"))  # fmt: skip
    work = Path(fed.sites[1].work_dir)
    (work / "supernode.log").write_text("\x1b[92mINFO\x1b[0m: Starting\nWARNING: Connection "
                                        "attempt failed, retrying in 2 seconds\n")  # fmt: skip
    res = CliRunner().invoke(app, ["site", "status", str(fed.protocol), "--site-config",
                                   str(configs["site-1"]), "--work-dir", str(work)])  # fmt: skip
    out = _flat(res.output)
    assert res.exit_code == 0, out
    assert "accepted: yes, signed by sha256:" in out
    assert "last round trained: global round 1" in out
    assert "audit log: training-round" in out
    assert "connection: WARNING: Connection attempt failed, retrying in 2 seconds" in out
    assert "no ledger (no DP charge here)" in out  # a plain protocol charges nothing
    # once the SuperLink activates the node, Flower 1.42 logs only its id: that reads "connected"
    with (work / "supernode.log").open("a") as fh:
        fh.write("\x1b[92mINFO \x1b[0m:      SuperNode ID: 14935555514046201140\n"
                 "\x1b[92mINFO \x1b[0m:      Received successfully\n")  # fmt: skip
    res = CliRunner().invoke(app, ["site", "status", str(fed.protocol), "--site-config",
                                   str(configs["site-1"]), "--work-dir", str(work)])  # fmt: skip
    assert "connection: connected to the SuperLink as node 14935555514046201140" in _flat(
        res.output
    )


def test_status_says_no_and_exits_3_when_the_policy_refuses(tmp_path: Path) -> None:
    fed = Federation(tmp_path / "fed", aggregation="fedavg")
    write_keys(generate_keys("server", "server"), tmp_path / "keys")
    configs = trusted_site_configs(tmp_path / "configs", fed.protocol, ["site-1"],
                                   tmp_path / "keys" / "server.pub.json",
                                   require_version_pin=False)  # fmt: skip
    res = CliRunner().invoke(app, ["site", "status", str(fed.protocol), "--site-config",
                                   str(configs["site-1"])])  # fmt: skip
    assert res.exit_code == 3
    assert "accepted: NO:" in _flat(res.output)
