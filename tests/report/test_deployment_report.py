"""report.html of a study over the deployment (securefed.report.deployment): every section from
a results.json of the shape `securefed federation run` writes, escaped, the audit verdicts marked,
a protocol that releases no test metric said so; rendered in headless Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.browser import inked_rows, render, require_chromium

from securefed.report.deployment import render_deployment_report, write_deployment_report


def _results(released: bool = True) -> dict[str, Any]:
    def site(method: str, pid: int, cluster: int, n: int, dice: float) -> dict[str, Any]:
        scores = {"dice_tc": dice, "dice_wt": dice, "dice_et": dice, "dice_mean": dice}
        return {"method": method, "cluster": cluster, "partition_id": pid, "num_test": n,
                "site": f"site-{pid}", **(scores if released else {})}  # fmt: skip

    pooled = {"num_test": 5, "sites": 2, "dice_tc": 0.7, "dice_wt": 0.8, "dice_et": 0.6,
              "dice_mean": 0.7} if released else {"num_test": 0, "sites": 0}  # fmt: skip
    return {
        "protocol": "sha256:" + "a" * 64, "securefed": "0.1.0", "finished": "2026-12-07",
        "stages": {"features": 19.1, "clustering": 14.5, "training": 134.0,
                   "evaluation": 35.9, "report": 0.0},
        "clustering": {"mode": "plain", "k": 2, "k_selection": "fixed", "fit_cases": 12,
                       "cluster_sizes": {"0": 7, "1": 8}},
        "phases": {"global": {"weights": "global/best.npz", "best_round": 1, "best_score": 0.5},
                   "clusters": {"0": {"weights": "cluster-0/best.npz", "status": "finetuned",
                                      "sites": [1, 3], "best_round": 1, "best_score": None}}},
        "methods": {
            "fedavg": {"test": pooled, "unseen": {"num_test": 0},
                       "per_site": [site("fedavg", 1, -1, 3, 0.7), site("fedavg", 2, -1, 2, 0.7)]},
            "cffl": {"test": pooled, "unseen": {"num_test": 0},
                     "per_site": [site("cffl", 1, 0, 3, 0.7), site("cffl", 2, 1, 2, 0.7)]},
        },
        "evaluation_release": "per-site test counts and mean Dice per region (plain protocol)",
        "audit_logs": {"site-1": "verified (18 entries)", "site-2": "FAILED: <edited entry 3>"},
    }  # fmt: skip


EGRESS = [{"stage": "evaluation", "value": "test case count and mean Dice per region",
           "to": "server", "protection": "clear <per site>", "epsilon": "inf"}]  # fmt: skip


def test_the_deployment_report_shows_every_section_and_escapes(tmp_path: Path) -> None:
    html = render_deployment_report(_results(), EGRESS, "pilot <study>", "plain", "secagg+")
    for heading in ("Test Dice", "Per site", "Clustering", "Training phases", "Stages",
                    "Audit logs", "What left each site"):  # fmt: skip
        assert f">{heading}<" in html, heading
    assert "pilot &lt;study&gt;" in html and "<study>" not in html
    assert "&lt;edited entry 3&gt;" in html and 'class="bad"' in html and 'class="ok"' in html
    assert "clear &lt;per site&gt;" in html
    assert "0.700" in html and "No test metric" not in html
    require_chromium()
    page = write_deployment_report(tmp_path / "report.html", _results(), EGRESS, "pilot",
                                   "plain", "secagg+")  # fmt: skip
    dom, shot = render(page, tmp_path / "shot.png")
    assert "Audit logs" in dom and len(inked_rows(shot)) > 400


def test_a_protocol_without_test_metrics_says_so(tmp_path: Path) -> None:
    results = _results(released=False)
    results["clustering"] = {"mode": "secure-aggregate", "k": 2, "cluster_sizes": {},
                             "secure": {"algorithm": "dp-histogram", "epsilon": 1.0,
                                        "rounds": ["histogram", "stats"]}}  # fmt: skip
    html = render_deployment_report(results, EGRESS, "dp", "secure-aggregate", "secagg+")
    assert "No test metric reached the coordinator" in html
    assert ">Per site<" not in html, "no table of zero counts"
    assert "federated DP clustering (dp-histogram, 2 masked rounds, epsilon 1.0" in html
