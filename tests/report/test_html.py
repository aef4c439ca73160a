"""report.html and results.json from a results mapping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from securefed.fileio import read_json, write_json_atomic
from securefed.report import write_report


def _results() -> dict:
    per_cluster = {"0": {"mean": 0.7, "n": 3}, "1": {"mean": 0.5, "n": 2}}
    return {
        "securefed_version": "0.1.0",
        "protocol": {
            "name": "t",
            "sha256": "sha256:" + "0" * 64,
            "mode": "simulation",
            "release_mode": "plain",
        },
        "warnings": ["features released without DP (epsilon = inf)"],
        "data": {
            "sites": [
                {
                    "site": "site-1",
                    "partition_id": 1,
                    "train": 3,
                    "val": 1,
                    "test": 1,
                    "role": "training",
                }
            ],
            "excluded": [{"case": "FeTS2022_00009", "problem": "truncated flair"}],
        },
        "clustering": {
            "algorithm": "gmm",
            "k": 2,
            "k_selection": "bic",
            "selection": {"scores": {"2": -10.0, "3": -8.0}},
            "quality": {"ari_scanner": 1.0},
        },
        "segmentation": {
            "methods": {
                "fedavg": {
                    "mean": {"TC": 0.5, "WT": 0.8, "ET": 0.6, "mean": 0.63},
                    "hd95": {"TC": 5.0, "WT": 3.0, "ET": float("nan")},
                    "per_cluster": {"0": {"mean": 0.6, "n": 3}, "1": {"mean": 0.55, "n": 2}},
                    "n_cases": 5,
                    "private": True,
                },
                "cffl": {
                    "mean": {"TC": 0.55, "WT": 0.82, "ET": 0.61, "mean": 0.66},
                    "per_cluster": per_cluster,
                    "n_cases": 5,
                    "private": True,
                },
                "centralized": {
                    "mean": {"TC": 0.6, "WT": 0.85, "ET": 0.7, "mean": 0.72},
                    "n_cases": 5,
                    "private": False,
                },
            },
            "fallbacks": [{"cluster": 1, "reason": "1 site < 2: global model kept"}],
        },
        "training_curves": {
            "global": [{"round": 1, "val_dice": 0.2}, {"round": 2, "val_dice": 0.5}]
        },
        "privacy": {
            "total_epsilon": math.inf,
            "per_site": {"site-1": {"epsilon": math.inf, "delta": 0, "releases": 1}},
        },
        "timings": {"features": np.float64(1.5)},
    }


def test_report_contains_every_section(tmp_path: Path) -> None:
    out = write_report(tmp_path, _results())
    page = out.read_text()
    for needle in (
        "Federation",
        "Clustering",
        "Segmentation",
        "CFFL over FedAvg",
        "Training curves",
        "Privacy spent",
        "FeTS2022_00009",
        "centralized (non-private)",
        "features released without DP",
    ):
        assert needle in page, needle
    assert page.count("data:image/png;base64,") == 3
    assert (tmp_path / "plots" / "cffl_gain.png").stat().st_size > 1000


def test_results_json_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, _results())
    text = path.read_text()
    json.loads(text)  # strict: no NaN/Infinity tokens
    assert "NaN" not in text
    assert "Infinity" not in text
    data = read_json(path)
    assert data["privacy"]["total_epsilon"] == "inf"
    assert data["segmentation"]["methods"]["fedavg"]["hd95"]["ET"] is None
    assert not list(tmp_path.glob(".results.json.*"))


def test_report_escapes_what_it_shows(tmp_path: Path) -> None:
    """Names from protocols and data are escaped by the template (autoescape), never markup."""
    results = _results()
    results["protocol"]["name"] = "<script>alert(1)</script>"
    results["data"]["excluded"][0]["problem"] = "bad <b>file</b> & more"
    page = write_report(tmp_path, results).read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "bad &lt;b&gt;file&lt;/b&gt; &amp; more" in page


def _methods_with_intervals() -> dict:
    ci = {"TC": [0.45, 0.55], "WT": [0.75, 0.85], "ET": [0.55, 0.65], "mean": [0.6, 0.66]}
    scanner = {
        "siemens-3t": {"mean": 0.71, "n": 8, "ci": [0.65, 0.77]},
        "legacy-1.5t": {"mean": 0.84, "n": 1, "ci": [0.84, 0.84]},  # degenerate: n too small
    }
    return {
        "fedavg": {
            "mean": {"TC": 0.5, "WT": 0.8, "ET": 0.6, "mean": 0.63},
            "ci": ci,
            "hd95": {"TC": 5.0, "WT": 3.0, "ET": 4.0},
            "n_cases": 9,
            "private": True,
            "per_scanner": scanner,
        },
        "cffl": {
            "mean": {"TC": 0.55, "WT": 0.82, "ET": 0.61, "mean": 0.66},
            "ci": {"TC": [0.4, 0.7], "WT": None, "ET": None, "mean": None},
            "n_cases": 2,  # too few cases for an interval, whatever the results hold
            "private": True,
            "per_scanner": scanner,
        },
    }


def test_dice_table_shows_intervals_and_n(tmp_path: Path) -> None:
    """The Dice table gives each mean its 95 % interval and the number of test cases; fewer than
    MIN_INTERVAL_CASES cases say "n too small", also per scanner (never "[0.840, 0.840]")."""
    results = _results()
    results["segmentation"]["methods"] = _methods_with_intervals()
    page = write_report(tmp_path, results).read_text()
    assert "test cases (n)" in page
    assert "<td>9</td>" in page
    for interval in ("[0.450, 0.550]", "[0.750, 0.850]", "[0.550, 0.650]", "[0.600, 0.660]"):
        assert f'<span class="ci">{interval}</span>' in page, interval
    assert '<span class="ci">n too small</span>' in page  # cffl: n = 2
    assert "[0.400, 0.700]" not in page
    assert '0.710<span class="ci">[0.650, 0.770] n=8</span>' in page
    assert '0.840<span class="ci">n=1 (n too small)</span>' in page
    assert "[0.840, 0.840]" not in page
    assert "95% percentile bootstrap" in page


def test_dice_bar_chart_has_error_bars(tmp_path: Path) -> None:
    from matplotlib.axes import Axes

    from securefed.report import plots

    drawn: list[Axes] = []
    save = plots._save

    def keep(fig, path):  # type: ignore[no-untyped-def]
        drawn.extend(fig.axes)
        return save(fig, path)

    plots._save = keep  # type: ignore[assignment]
    try:
        plots.plot_dice_by_method(_methods_with_intervals(), tmp_path / "dice.png")
    finally:
        plots._save = save  # type: ignore[assignment]
    (ax,) = drawn
    from matplotlib.container import BarContainer, ErrorbarContainer

    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    errors = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(errors) == 3  # one group per region, each with its error bars
    tc = errors[0].lines[2][0].get_segments()  # TC: fedavg, then cffl
    assert np.allclose([tc[0][0][1], tc[0][1][1]], [0.45, 0.55])  # fedavg's interval
    assert np.allclose([tc[1][0][1], tc[1][1][1]], [0.55, 0.55])  # cffl, n = 2: none drawn
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["fedavg\nn=9", "cffl\nn=2"]
    assert "95% bootstrap interval" in ax.get_title()


def test_k_table_names_its_criterion_and_the_chosen_k(tmp_path: Path) -> None:
    results = _results()  # gmm, k = 2 selected by BIC among 2 and 3
    page = write_report(tmp_path, results).read_text()
    assert "<th>BIC (lower is better)</th>" in page
    assert "GMM with k = 2, chosen by BIC among k = 2 to 3." in page
    assert '<td>2</td><td>-10.000</td><td class="chosen">chosen</td>' in page
    assert "lowest BIC was chosen" in page
    assert ">score<" not in page
    results["clustering"] |= {"k_selection": "silhouette", "k": 3,
                              "selection": {"criterion": "silhouette",
                                            "scores": {"2": 0.41, "3": 0.52}}}  # fmt: skip
    page = write_report(tmp_path, results).read_text()
    assert "<th>silhouette (higher is better)</th>" in page
    assert '<td>3</td><td>0.520</td><td class="chosen">chosen</td>' in page
    assert "adjusted Rand index (ARI), clusters vs scanner" in page


def test_summary_intervals_follow_the_reports_rule() -> None:
    from securefed.evaluation.summary import MIN_INTERVAL_CASES, summarize_methods
    from securefed.report.html import MIN_INTERVAL_CASES as REPORT_MIN

    assert MIN_INTERVAL_CASES == REPORT_MIN == 3
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        d = rng.uniform(0.5, 0.9, 3)
        rows.append({"method": "fedavg", "subject_id": f"c{i}", "site": "s",
                     "dice_tc": d[0], "dice_wt": d[1], "dice_et": d[2], "dice_mean": d.mean(),
                     "hd95_tc": 1.0, "hd95_wt": 1.0, "hd95_et": 1.0})  # fmt: skip
    scanner_of = {f"c{i}": "a" if i else "b" for i in range(10)}
    res = summarize_methods(rows, scanner_of)["fedavg"]
    for region in ("TC", "WT", "ET", "mean"):
        lo, hi = res["ci"][region]
        assert lo < res["mean"][region] < hi, region
    assert res["per_scanner"]["a"]["ci"] is not None
    assert res["per_scanner"]["a"]["n"] == 9
    assert res["per_scanner"]["b"]["ci"] is None  # one case: no interval
    two = summarize_methods(rows[:2])["fedavg"]
    assert two["ci"] == {"TC": None, "WT": None, "ET": None, "mean": None}


def test_cluster_heatmap_has_a_colour_scale_and_named_axes(tmp_path: Path) -> None:
    from securefed.clustering import plots

    drawn: list = []
    save = plots._savefig

    def keep(fig, path):  # type: ignore[no-untyped-def]
        drawn.extend(fig.axes)
        save(fig, path)

    plots._savefig = keep  # type: ignore[assignment]
    try:
        counts = np.array([[3, 0], [1, 4]])
        plots.plot_table(counts, [0, 1], ["ge-1.5t", "siemens-3t"], tmp_path / "t.png",
                         "cluster x scanner", group="scanner")  # fmt: skip
    finally:
        plots._savefig = save  # type: ignore[assignment]
    heatmap, colorbar = drawn  # the table and its colour scale
    assert heatmap.get_xlabel() == "scanner"
    assert heatmap.get_ylabel() == "cluster (fitted)"
    assert colorbar.get_ylabel() == "cases"
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_report_renders_intervals_in_chromium(tmp_path: Path) -> None:
    from support.browser import images, inked_rows, render, require_chromium

    results = _results()
    results["segmentation"]["methods"] = _methods_with_intervals()
    page = write_report(tmp_path, results)
    require_chromium()
    dom, shot = render(page, tmp_path / "report.png", height=3000)
    assert "[0.450, 0.550]" in dom
    assert "n too small" in dom
    assert "BIC (lower is better)" in dom
    assert len(images(dom)) == 2  # Dice bars and training curves (no per-cluster results)
    assert len(inked_rows(shot)) > 600
