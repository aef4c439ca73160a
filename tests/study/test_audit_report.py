"""`securefed audit report`: the run's audits in one page (audit.html), rendered in headless
Chromium with a screenshot checked for every section; exit 4 when an audit holds a finding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.browser import needs_chromium, render
from typer.testing import CliRunner

from securefed.cli import app

SECTIONS = ("egress", "features", "models", "dp", "findings")


def _chromium(page: Path, tmp: Path) -> tuple[str, np.ndarray]:
    return render(page, tmp / "audit.png", height=3000)


@pytest.mark.slow
@needs_chromium
def test_report_gathers_every_audit_and_renders(plain_rundir: Path, tiny_federation: Path,
                                                tmp_path: Path) -> None:  # fmt: skip
    run = CliRunner().invoke
    out = str(plain_rundir / "audit")
    assert run(app, ["audit", "egress", str(plain_rundir)]).exit_code == 0
    truth = str(tiny_federation / "truth.csv")
    assert run(app, ["audit", "features", str(plain_rundir), "--truth", truth]).exit_code == 0
    assert run(app, ["audit", "dp", "--out", out, "--trials", "20000", "--mechanism",
                     "feature-laplace"]).exit_code == 0  # fmt: skip
    res = run(app, ["audit", "report", str(plain_rundir)])
    assert res.exit_code == 0, res.output
    page = plain_rundir / "audit" / "audit.html"
    dom, image = _chromium(page, tmp_path)
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    assert "No finding" in dom and "linkage" in dom and "feature-laplace" in dom
    inked = np.flatnonzero((image < 200).any(axis=1))
    assert len(inked) > 800 and inked.max() > 1500  # text and plots all the way down
    # A finding in any audit (here: a float sampler's DP audit) makes the report exit 4.
    assert run(app, ["audit", "dp", "--out", out, "--trials", "20000", "--mechanism",
                     "float-laplace"]).exit_code == 4  # fmt: skip
    res = run(app, ["audit", "report", str(plain_rundir)])
    assert res.exit_code == 4, res.output
    dom, _ = _chromium(page, tmp_path)
    assert "finding(s)" in dom and "above the claimed epsilon" in dom
    assert json.loads((plain_rundir / "audit" / "dp.json").read_text())["findings"]


def test_report_names_the_commands_of_missing_audits(plain_rundir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(plain_rundir / "protocol.toml", run / "protocol.toml")
    res = CliRunner().invoke(app, ["audit", "report", str(run)])
    assert res.exit_code == 0, res.output
    html = (run / "audit" / "audit.html").read_text()
    assert "Not run: <code>securefed audit egress" in html
    assert "securefed audit dp --out" in html and "securefed audit features" in html
    assert "securefed audit models" in html
