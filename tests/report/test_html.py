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
    assert "NaN" not in text and "Infinity" not in text
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
