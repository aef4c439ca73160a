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
        "verdict    effective epsilon inf: features plain (no DP, epsilon inf); training without "
        "DP (epsilon inf); the declared total epsilon 8 is spent by no DP stage"
    ]
    # the old "budget" line, which set an allocation of 0 against the declared 8, is gone
    assert not any("allocated epsilon=0 of 8" in line for line in lines)


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (ROOT / "protocols").glob("*.toml"))
)  # fmt: skip
def test_the_verdict_matches_the_stage_epsilons_the_policy_checks(name: str) -> None:
    path = ROOT / "protocols" / f"{name}.toml"
    protocol = load_protocol(path).protocol
    stages = stage_epsilons(protocol)
    (verdict,) = [line for line in _check(path) if line.startswith("verdict ")]
    effective = math.inf if any(s.clear for s in stages) else sum(s.dp for s in stages)
    assert verdict.startswith(f"verdict    effective epsilon {effective:g}:"), verdict
    for stage in stages:
        if stage.dp > 0:
            assert f"{stage.stage} DP (epsilon {stage.dp:g})" in verdict, verdict
        elif stage.clear:
            assert f"{stage.stage} plain (no DP, epsilon inf)" in verdict or (
                f"{stage.stage} without DP (epsilon inf)" in verdict
            ), verdict
        else:
            assert f"{stage.stage} " not in verdict.split(":", 1)[1], verdict
        if stage.dp > 0 and stage.clear:
            assert f"except {', '.join(stage.clear)} (no DP, epsilon inf)" in verdict
