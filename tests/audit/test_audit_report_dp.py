"""The DP section of `securefed audit report`: per mechanism the claim, the empirical lower bound,
the largest epsilon the run could certify, the power against half the noise, the noise check and
the status in words. An inconclusive row (a claim above what the run could certify) never reads
as a pass, in the HTML and in headless Chromium; an older dp.json without these fields still
renders, saying "not stated"."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from support.browser import inked_rows, render, require_chromium

from securefed.audit.report import audit_findings, dp_rows, write_audit_report

PROTOCOLS = Path(__file__).resolve().parents[2] / "protocols"


def _run(tmp: Path, dp: dict[str, Any]) -> Path:
    run = tmp / "run"
    (run / "audit").mkdir(parents=True)
    shutil.copy(PROTOCOLS / "demo-dpsgd.toml", run / "protocol.toml")
    (run / "audit" / "dp.json").write_text(json.dumps(dp))
    return run


def _row(name: str, claim: float, status: str, *, best: float, power: float,
         implied: float, bound: float = 1.9, quick: bool = False) -> dict[str, Any]:  # fmt: skip
    return {
        "mechanism": name, "description": f"{name} as the site runs it", "claimed_epsilon": claim,
        "delta": 1e-6, "lower_bound": bound, "max_certifiable": best, "power_2x": power,
        "status": status,
        "float_distinguisher": {"impossible_fraction": 0.0, "own_outputs_possible": 1.0},
        "noise_check": {"statistic": "shift over noise (mu)", "measured": 0.79, "lower": 0.77,
                        "planned": 0.79, "epsilon_implied": implied, "confidence": 0.999,
                        "finding": implied > claim},
        "trials": 20000, "confidence": 0.999, "quick": quick, "seconds": 1.0,
        "finding": status == "finding",
    }  # fmt: skip


def _doc(rows: list[dict[str, Any]], *, quick: bool = False) -> dict[str, Any]:
    return {"kind": "dp-audit", "noise_scale": 1.0, "note": "", "mode": "protocol",
            "quick": quick, "power": {"violation": "half the noise", "target": 0.95},
            "not_audited": [], "mechanisms": rows,
            "findings": [r["mechanism"] for r in rows if r["finding"]]}  # fmt: skip


def _dp_rows_html(html: str) -> dict[str, str]:
    """Each DP table row's HTML by mechanism."""
    section = html[html.index('<section id="dp">') : html.index('<section id="findings">')]
    found = re.finditer(r'<tr class="dp-[^"]*">\s*<td[^>]*>([^<]+)</td>.*?</tr>', section, re.S)
    return {m.group(1): m.group(0) for m in found}


def _reads_as_pass(row_html: str) -> bool:
    text = re.sub(r"<[^>]+>", " ", row_html)
    return (
        'class="ok"' in row_html
        or "dp-ok" in row_html
        or re.search(r"\b(within|ok|pass(ed)?|held)\b", text.replace("not a pass", "")) is not None
    )


def test_an_inconclusive_row_never_reads_as_a_pass(tmp_path: Path) -> None:
    rows = [
        _row("feature-gaussian", 4.0, "ok", best=9.88, power=0.95, implied=3.92),
        _row("dp-sgd", 8.0, "inconclusive", best=4.885, power=0.0, implied=7.81, quick=True),
    ]
    run = _run(tmp_path, _doc(rows, quick=True))
    path, findings = write_audit_report(run)
    html = path.read_text()
    assert findings == []
    shown = _dp_rows_html(html)
    assert set(shown) == {"feature-gaussian", "dp-sgd"}
    assert not _reads_as_pass(shown["dp-sgd"]), shown["dp-sgd"]
    assert ("inconclusive: this run could certify at most 4.885, below the claim 8; no violation "
            "found, but this is not a pass") in shown["dp-sgd"]  # fmt: skip
    assert "20,000 outputs, quick" in shown["dp-sgd"]
    assert "--quick" in html
    # every field of the row: claim, bound, certifiable, power, noise check
    for cell in (">8, 1e-06<", ">1.900<", ">4.885<", ">&lt; 0.1\u00a0%<", ">7.810<"):
        assert cell in shown["dp-sgd"], cell
    assert _reads_as_pass(shown["feature-gaussian"])  # the check itself sees an ok row
    assert "ok: no violation found; the run could certify up to 9.880" in shown["feature-gaussian"]
    # The headline: no claim broken, but not "every audited claim held".
    claims = html[html.index('id="claims"') : html.index('id="leakage"')]
    assert 'class="verdict unproven"' in html
    assert "every audited claim" not in claims
    assert "could not certify 1 claim(s)</span> (dp-sgd): inconclusive, not a pass" in claims


def test_an_ok_status_above_what_the_run_could_certify_is_shown_inconclusive() -> None:
    """Whatever dp.json says, a claim at or above max_certifiable is not shown as ok."""
    row = _row("client-dp", 8.0, "ok", best=7.875, power=0.0, implied=7.8)
    (shown,) = dp_rows(_doc([row]))
    assert shown["status"] == "inconclusive"
    assert shown["status_words"].startswith("inconclusive: this run could certify at most 7.875")


def test_an_older_dp_json_renders_with_not_stated(tmp_path: Path) -> None:
    """A dp.json of before the stated power (no status, max_certifiable, power_2x, noise_check,
    power target): the page renders, says "not stated", and calls no row ok."""
    old = {"mechanism": "feature-laplace", "description": "local-dp release",
           "claimed_epsilon": 1.0, "delta": 0.0, "lower_bound": 0.71,
           "float_distinguisher": {"impossible_fraction": 0.0, "own_outputs_possible": 1.0},
           "trials": 20000, "confidence": 0.999, "seconds": 1.0, "finding": False}  # fmt: skip
    doc = {"kind": "dp-audit", "noise_scale": 1.0, "note": "", "mechanisms": [old],
           "findings": []}  # fmt: skip
    html = write_audit_report(_run(tmp_path, doc))[0].read_text()
    row = _dp_rows_html(html)["feature-laplace"]
    assert row.count("not stated") >= 3  # certifiable, power, noise check
    assert not _reads_as_pass(row), row
    assert "not stated (an older dp.json)" in row
    assert "rerun securefed audit dp" in row
    assert 'class="verdict unproven"' in html


def test_a_noise_check_finding_says_why(tmp_path: Path) -> None:
    row = _row("client-dp", 8.0, "finding", best=12.0, power=0.96, implied=18.44, bound=2.5)
    found = audit_findings(None, _doc([row]))
    assert found == [{"audit": "dp", "where": "client-dp", "finding": "the measured noise "
                      "implies epsilon 18.440, above the claimed epsilon 8"}]  # fmt: skip
    html = write_audit_report(_run(tmp_path, _doc([row])))[0].read_text()
    shown = _dp_rows_html(html)["client-dp"]
    assert "finding: the measured noise implies epsilon 18.440" in shown
    assert ">18.440 (above the claim)<" in shown
    assert not _reads_as_pass(shown)
    assert 'class="verdict fail"' in html
    inf = _row("float-laplace", 1.0, "finding", best=7.9, power=1.0, implied=0.9, bound=1.0)
    inf["lower_bound"] = "inf"  # as dp.json writes an infinite bound
    assert audit_findings(None, _doc([inf]))[0]["finding"] == (
        "empirical lower bound infinite above the claimed epsilon 1"
    )


def test_the_dp_section_renders_in_chromium(tmp_path: Path) -> None:
    require_chromium()
    rows = [
        _row("feature-gaussian", 4.0, "ok", best=9.88, power=0.95, implied=3.92),
        _row("client-dp", 8.0, "inconclusive", best=7.875, power=0.0, implied=7.8),
    ]
    run = _run(tmp_path, _doc(rows))
    dom, image = render(write_audit_report(run)[0], tmp_path / "audit.png", height=1600)
    shown = _dp_rows_html(dom)
    assert not _reads_as_pass(shown["client-dp"])
    assert "inconclusive: this run could certify at most 7.875, below the claim 8" in dom
    assert "largest certifiable epsilon" in dom
    assert "power against half the noise" in dom
    assert len(inked_rows(image)) > 400  # the page and its tables are drawn


def test_a_protocol_without_dp_stages_says_nothing_was_audited(tmp_path: Path) -> None:
    """`audit dp RUNDIR` of a plain protocol writes no rows: the page says so, with the
    stand-alone command, and draws no empty table."""
    html = write_audit_report(_run(tmp_path, _doc([])))[0].read_text()
    section = html[html.index('<section id="dp">') : html.index('<section id="findings">')]
    assert "No mechanism audited: the audited protocol enables no DP stage" in section
    assert "<table" not in section
    assert "securefed audit dp --out" in section
