"""`securefed protocol check`: one line on what is and is not private, stage by stage, that says
what the site's policy checks (securefed.protocol.egress.stage_epsilons)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from securefed.cli import app
from securefed.protocol import load_protocol
from securefed.protocol.egress import stage_epsilons

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _check(path: Path) -> list[str]:
    res = runner.invoke(app, ["protocol", "check", str(path)], terminal_width=400)
    assert res.exit_code == 0, res.output
    return res.output.splitlines()


def test_the_plain_demo_says_in_one_line_that_nothing_is_dp() -> None:
    lines = _check(ROOT / "protocols" / "demo.toml")
    verdicts = [line for line in lines if line.startswith("verdict ")]
    assert verdicts == [
        "verdict    effective epsilon inf; DP: none (declared budget epsilon 8, delta 1e-05 per "
        "site; no stage uses it); not private (epsilon inf): features (plain), training (no DP "
        "training)"
    ]
    # the declared total is named only as the DP stages' budget: no bare "total epsilon=8" next
    # to "NO DP", no allocation of 0 against it
    assert not any("total epsilon" in line or "allocated epsilon" in line for line in lines)


def test_render_names_the_declared_budget_only_as_the_dp_stages_budget() -> None:
    res = runner.invoke(app, ["protocol", "render", str(ROOT / "protocols" / "demo.toml")],
                        terminal_width=400)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "total epsilon" not in res.output
    assert "total per site" not in res.output
    assert "Allocated: epsilon 0" not in res.output
    assert "declared budget per site (for the DP stages) | 8 |" in res.output
    assert "  Verdict: effective epsilon inf; DP: none (declared budget epsilon 8" in res.output


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (ROOT / "protocols").glob("*.toml"))
)  # fmt: skip
def test_the_verdict_matches_the_stage_epsilons_the_policy_checks(name: str) -> None:
    path = ROOT / "protocols" / f"{name}.toml"
    protocol = load_protocol(path).protocol
    stages = stage_epsilons(protocol)
    (verdict,) = [line for line in _check(path) if line.startswith("verdict ")]
    effective = math.inf if any(s.clear for s in stages) else sum(s.dp for s in stages)
    assert verdict.startswith(f"verdict    effective epsilon {effective:g}; DP: "), verdict
    dp_part, _, plain_part = verdict.partition("; not private")
    for stage in stages:
        if stage.dp > 0:
            assert f"{stage.stage} (epsilon {stage.dp:g})" in dp_part, verdict
        elif stage.clear:
            assert f"{stage.stage} (plain)" in plain_part or (
                f"{stage.stage} (no DP training)" in plain_part
            ), verdict
        else:
            assert f"{stage.stage} " not in verdict.split(";", 1)[1], verdict
        if stage.dp > 0 and stage.clear:
            assert f"{stage.stage} ({', '.join(stage.clear)})" in plain_part, verdict
    if not any(s.clear for s in stages):
        assert verdict.endswith("; not private: nothing patient-derived"), verdict


def test_check_and_render_show_supernode_keys_and_approved_apps(tmp_path: Path) -> None:
    """Onboarding: `protocol check` says whether the sites' SuperNodes can run the protocol (node
    keys and approved apps), `protocol render` shows the node-key fingerprints and app hashes."""
    from support.deployment import study

    (tmp_path / "ready").mkdir()
    (tmp_path / "bare").mkdir()
    proto, _, _ = study(tmp_path / "ready", n_sites=3)
    out = " ".join(CliRunner().invoke(app, ["protocol", "check", str(proto)]).output.split())
    assert "supernode ready: 3 node keys pinned, 1 approved app bundle(s)" in out
    loaded = load_protocol(proto)
    board = CliRunner().invoke(app, ["protocol", "render", str(proto), "--format", "md"]).output
    for site in loaded.protocol.sites:
        assert str(site.node_key) in board
    assert loaded.protocol.governance.approved_apps[0] in board
    bare, _, _ = study(tmp_path / "bare", n_sites=3, approve_app=False)
    out = " ".join(CliRunner().invoke(app, ["protocol", "check", str(bare)]).output.split())
    assert "supernode NOT READY: missing governance.approved_apps" in out
    demo = Path(__file__).resolve().parents[2] / "protocols" / "demo.toml"
    out = CliRunner().invoke(app, ["protocol", "check", str(demo)]).output
    assert "supernode" not in out  # a simulation needs no SuperNode
