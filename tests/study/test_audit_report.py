"""`securefed audit report`: the run's audits in one page (audit.html), rendered in headless
Chromium with a screenshot checked for every section; exit 4 when an audit holds a finding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.browser import needs_chromium, render
from support.study import copy_run
from typer.testing import CliRunner

from securefed.audit.report import field_words, metric_words, write_audit_report
from securefed.cli import app

SECTIONS = ("egress", "features", "models", "dp", "findings")


def _chromium(page: Path, tmp: Path) -> tuple[str, np.ndarray]:
    return render(page, tmp / "audit.png", height=3000)


@pytest.mark.slow
@needs_chromium
def test_report_gathers_every_audit_and_renders(plain_rundir: Path, tiny_federation: Path,
                                                tmp_path: Path) -> None:  # fmt: skip
    plain_rundir = copy_run(plain_rundir, tmp_path)  # the audits write RUNDIR/audit
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
    assert "no claim broken" in dom
    assert "Leakage measured" in dom
    assert "linkage" in dom
    assert "feature-laplace" in dom
    inked = np.flatnonzero((image < 200).any(axis=1))
    assert len(inked) > 800
    assert inked.max() > 1500
    # A finding in any audit (here: a float sampler's DP audit) makes the report exit 4.
    assert run(app, ["audit", "dp", "--out", out, "--trials", "20000", "--mechanism",
                     "float-laplace"]).exit_code == 4  # fmt: skip
    res = run(app, ["audit", "report", str(plain_rundir)])
    assert res.exit_code == 4, res.output
    dom, _ = _chromium(page, tmp_path)
    assert "finding(s): a protocol claim is broken" in dom
    assert "above the claimed epsilon" in dom
    assert json.loads((plain_rundir / "audit" / "dp.json").read_text())["findings"]


def test_report_names_the_commands_of_missing_audits(plain_rundir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(plain_rundir / "protocol.toml", run / "protocol.toml")
    res = CliRunner().invoke(app, ["audit", "report", str(run)])
    assert res.exit_code == 0, res.output
    html = (run / "audit" / "audit.html").read_text()
    assert "Not run: <code>securefed audit egress" in html
    assert "securefed audit dp --out" in html
    assert "securefed audit features" in html
    assert "securefed audit models" in html


DEMO = Path(__file__).resolve().parents[2] / "protocols"


def _run(tmp: Path, protocol: str = "demo.toml") -> Path:
    """A run folder holding only a shipped protocol (the audit JSON files are written by the
    tests)."""
    run = tmp / "run"
    (run / "audit").mkdir(parents=True)
    shutil.copy(DEMO / protocol, run / "protocol.toml")
    return run


def _write(run: Path, name: str, doc: dict) -> None:
    (run / "audit" / f"{name}.json").write_text(json.dumps(doc))


def _egress(findings: list[dict] | None = None) -> dict:
    fields = [
        {"site": "site-1", "stage": "training/global", "field": f, "protection": "clear",
         "what": "validation count, loss and mean Dice", "count": 3}
        for f in ("evaluateres.metrics.dice_et", "evaluateres.metrics.dice_tc",
                  "evaluateres.num_examples.num_examples")
    ] + [
        {"site": "site-1", "stage": "training/global", "field": f"fitres.parameters.{i}",
         "protection": "secure-aggregate", "what": "SecAgg+ masked update", "count": 3}
        for i in range(12)
    ] + [
        {"site": "site-1", "stage": "features", "field": f, "protection": "public",
         "what": "release metadata", "count": 1}
        for f in ("release.epsilon", "release.mode", "secaggplus_configs.pk1",
                  "secaggplus_configs.pk2", "secaggplus_configs.nids")
    ]  # fmt: skip
    return {"sites": ["site-1"], "fields": fields, "findings": findings or [], "warnings": []}


def _features() -> dict:
    return {"attacks": [
        {"attack": "linkage", "target": "top-1", "metric": "top-1 rate", "value": 1.0,
         "chance": 1 / 45, "ci": [0.92, 1.0], "n": 45},
        {"attack": "scanner-inference", "target": "scanner", "metric": "accuracy", "value": 0.3,
         "chance": 0.29, "ci": [0.18, 0.45], "n": 45},
    ], "not_applicable": []}  # fmt: skip


def _models() -> dict:
    attacks = [
        {"attack": "membership", "target": "fedavg", "model": "loss-threshold", "metric": m,
         "value": v, "chance": c, "ci": [max(0.0, v - 0.2), min(1.0, v + 0.2)], "n": 20,
         "members": 10}
        for m, v, c in (("auc", 0.55, 0.5), ("tpr@0.01fpr", 0.1, 0.01), ("tpr@0.001fpr", 0.1,
                                                                         0.001))
    ]  # fmt: skip
    return {"members": 10, "non_members": 10, "references": 2, "reference_steps": 5,
            "dp_sgd": False, "attacks": attacks, "not_yet": []}  # fmt: skip


def test_headline_separates_broken_claims_from_measured_leakage(tmp_path: Path) -> None:
    """A plain run whose linkage is 1.00 holds no finding (no claim is broken) but leaks: the
    headline says both, and "no finding" never reads as "safe"."""
    run = _run(tmp_path)
    _write(run, "egress", _egress())
    _write(run, "features", _features())
    path, findings = write_audit_report(run)
    html = path.read_text()
    assert findings == []
    assert "<b>Claims:</b>" in html
    assert "no claim broken" in html
    assert "<b>Leakage measured:</b>" in html
    assert 'class="verdict leak"' in html
    assert "1 of 2 attack results beat chance" in html  # linkage; scanner's interval holds chance
    assert "linkage (top-1, top-1 rate) 1.000 against chance 0.022" in html
    assert "claims no finite epsilon (plain release)" in html
    assert "not protected" in html
    assert "None." not in html
    assert "is not a finding" in html
    # Nothing attacked: leakage is "not measured", not "none".
    run2 = _run(tmp_path / "empty")
    html = write_audit_report(run2)[0].read_text()
    assert "no claim broken" in html
    assert "not measured" in html
    assert 'class="verdict unmeasured"' in html
    # A broken claim: the headline's first line, exit 4 in the CLI.
    finding = {"site": "site-1", "stage": "training/global",
               "field": "evaluateres.metrics.dice_et",
               "finding": "clear under a DP claim"}  # fmt: skip
    _write(run, "egress", _egress([finding]))
    path, findings = write_audit_report(run)
    html = path.read_text()
    assert len(findings) == 1
    assert "validation Dice (enhancing tumour)" in findings[0]["where"]
    assert "1 finding(s): a protocol claim is broken" in html
    assert "(exit 4)" in html
    assert CliRunner().invoke(app, ["audit", "report", str(run)]).exit_code == 4


def test_fields_are_named_in_words(tmp_path: Path) -> None:
    assert field_words("evaluateres.metrics.dice_et") == "validation Dice (enhancing tumour)"
    assert field_words("evaluateres.metrics.dice_mean") == (
        "validation Dice (mean of the three regions)"
    )
    assert field_words("fitres.metrics.loss") == "training loss"
    assert field_words("fitres.num_examples.num_examples") == (
        "training case count (FedAvg weight)"
    )
    assert field_words("fitres.parameters.3") == "model update (weights)"
    assert field_words("secaggplus_configs.masked_vector") == "SecAgg+ messages"
    assert field_words("secaggplus_configs.pk1") == "SecAgg+ messages: public keys"
    assert field_words("release.epsilon") == "release settings: epsilon"
    assert field_words("values") == "feature values of each case"
    assert field_words("something.new") == "something.new"  # unknown: as it is
    run = _run(tmp_path)
    _write(run, "egress", _egress())
    html = write_audit_report(run)[0].read_text()
    assert (">validation Dice (enhancing tumour), validation Dice (tumour core), validation case "
            "count<") in html  # fmt: skip
    assert ">model update (weights) (12 arrays)<" in html
    # one kind, listed once: never "release settings: epsilon, release settings: mode"
    assert ">release settings: epsilon, mode; SecAgg+ messages: node ids, public keys (2 " \
        "fields)<" in html  # fmt: skip
    assert ">evaluateres.metrics.dice_et<" not in html  # the raw name only in the tooltip
    assert 'title="evaluateres.metrics.dice_et, ' in html


def test_tpr_at_an_fpr_below_one_non_member_cannot_be_estimated(tmp_path: Path) -> None:
    """10 non-members: the smallest FPR above 0 is 10 %, so neither the TPR at 1 % nor at 0.1 %
    FPR is reported as a number; the AUC is."""
    assert metric_words("tpr@0.001fpr") == "TPR at 0.1% FPR"
    assert metric_words("auc") == "ROC AUC"
    run = _run(tmp_path)
    _write(run, "models", _models())
    html = write_audit_report(run)[0].read_text()
    assert "<td>TPR at 0.1% FPR</td>" in html
    assert "<td>ROC AUC</td>" in html
    assert ("cannot be estimated at 0.1% FPR: 10 non-members, so the smallest FPR above 0 is "
            "10%") in html  # fmt: skip
    assert "cannot be estimated at 1% FPR: 10 non-members" in html
    assert "TPR at 1% FPR needs at least 100 non-members, TPR at 0.1% FPR needs at least 1000" \
        in html  # fmt: skip
    assert "tpr@0.001fpr" not in html
    assert "0.550" in html  # the AUC keeps its number
    assert "none of 1 attack results beat chance" in html  # only the AUC counts
