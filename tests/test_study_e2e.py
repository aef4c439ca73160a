"""End to end on CPU: a tiny synthetic federation through every stage of `securefed run`
(extraction, sealed release, collection, clustering with the sealed model exchange, Flower
FedAvg + CFFL under SecAgg+, evaluation, report), then a resume that redoes nothing."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from securefed.cli import app
from securefed.data.synth import synthesize
from securefed.data.synth.presets import Institution, Preset

ROOT = Path(__file__).resolve().parents[1]

TINY = Preset(
    name="tiny-e2e",
    description="3 institutions x 5 cases at 6 mm, two scanners",
    institutions=(
        Institution(1, 5, (("siemens-3t", 0.6), ("legacy-1.5t", 0.4))),
        Institution(2, 5, (("siemens-3t", 1.0),)),
        Institution(3, 5, (("legacy-1.5t", 1.0),)),
    ),
    spacing_mm=6.0,
)


def tiny_protocol(tmp: Path, aggregation: str = "secagg+") -> Path:
    data = tomllib.loads((ROOT / "protocols" / "demo.toml").read_text())
    data["study"]["name"] = "tiny-e2e"
    data["clustering"].update({"k_selection": "fixed", "k": 2, "pca_components": 3, "n_init": 2})
    data["training"].update(
        {
            "crop_size": [16, 16, 16],
            "spacing_mm": 6.0,
            "global_rounds": 1,
            "local_steps": 1,
            "finetune_rounds": 1,
            "local_epochs_baseline": 1,
            "baselines": ["local", "fedavg", "cffl"],
            "aggregation": aggregation,
        }
    )
    data["evaluation"].update({"roi_size": [32, 32, 32], "hd95": False})
    data["secure_aggregation"]["timeout_s"] = 60
    path = tmp / "tiny.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


@pytest.fixture(scope="module")
def tiny_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fed") / "data"
    synthesize(out, preset=TINY, seed=1)
    return out


@pytest.mark.slow
def test_run_whole_study_and_resume(tiny_federation: Path, tmp_path: Path) -> None:
    protocol = tiny_protocol(tmp_path)
    rundir = tmp_path / "run"
    runner = CliRunner()
    args = ["run", str(protocol), "--data", str(tiny_federation), "--out", str(rundir),
            "--truth", str(tiny_federation / "truth.csv"), "--workers", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("protocol.toml", "clusters.csv", "results.json", "report.html",
                 "evaluation/per_case.csv", "training/phases.json"):  # fmt: skip
        assert (rundir / name).is_file(), name
    results = json.loads((rundir / "results.json").read_text())
    methods = results["segmentation"]["methods"]
    assert {"local", "fedavg", "cffl"} <= set(methods)
    for res in methods.values():
        assert res["n_cases"] > 0
        assert all(0.0 <= res["mean"][r] <= 1.0 for r in ("TC", "WT", "ET"))
    assert results["clustering"]["k"] == 2
    assert "ari_scanner" in results["clustering"]["quality"]
    # Every site released through the sealed channel: one envelope per site in the inbox.
    assert len(list((rundir / "server" / "inbox").glob("*.env"))) == 3
    # The server holds the collected table and nothing of the sites' raw folders.
    collected = (rundir / "server" / "features" / "features.csv").read_text().splitlines()
    assert len(collected) == 1 + 15
    clusters = (rundir / "clusters.csv").read_text().splitlines()
    assert clusters[0] == "subject_id,partition_id,split,cluster" and len(clusters) == 16
    # Resume: every stage but the report is skipped, nothing is recomputed.
    before = (rundir / "training" / "phases.json").stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output
    assert (rundir / "training" / "phases.json").stat().st_mtime_ns == before


def test_run_refuses_other_protocol_in_same_rundir(tiny_federation: Path, tmp_path: Path) -> None:
    protocol = tiny_protocol(tmp_path)
    rundir = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(
        app, ["run", str(protocol), "--data", str(tiny_federation), "--out", str(rundir),
              "--stop-after", "features", "--workers", "1"],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    (tmp_path / "other").mkdir()
    other = tiny_protocol(tmp_path / "other", aggregation="fedavg")
    second = runner.invoke(
        app, ["run", str(other), "--data", str(tiny_federation), "--out", str(rundir)]
    )
    assert second.exit_code == 2
    assert "holds a run of protocol" in second.output
