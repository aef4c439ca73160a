"""`securefed audit features`: the attacks on what the server holds. On the paper's plain release
the linkage attack finds every patient (the attacker's own features are the released ones); a
local-dp release lowers it; a secure-aggregate release has no per-case record to attack."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.study import copy_run
from typer.testing import CliRunner

from securefed.audit.features import run_feature_attacks
from securefed.cli import app

SHAPE = {"attack", "target", "metric", "value", "chance", "ci"}


@pytest.mark.slow
def test_attacks_on_a_plain_release(
    plain_rundir: Path, tiny_federation: Path, tmp_path: Path
) -> None:
    plain_rundir = copy_run(plain_rundir, tmp_path)  # the audit writes RUNDIR/audit
    res = CliRunner().invoke(app, ["audit", "features", str(plain_rundir), "--truth",
                                   str(tiny_federation / "truth.csv"), "--data",
                                   str(tiny_federation)])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((plain_rundir / "audit" / "features.json").read_text())
    by = {(a["attack"], a["target"], a["metric"]): a for a in doc["attacks"]}
    for a in doc["attacks"]:
        assert set(a) >= SHAPE and a["ci"][0] <= a["value"] <= a["ci"][1], a
    # Plain: the attacker's features ARE the released ones.
    assert by[("linkage", "top-1", "top-1 rate")]["value"] == 1.0
    assert {"scanner-inference", "institution-inference", "attribute-inference",
            "reconstruction"} <= {a["attack"] for a in doc["attacks"]}  # fmt: skip
    assert (plain_rundir / "audit" / "features.png").stat().st_size > 1000


@pytest.mark.slow
def test_real_data_without_truth_attacks_the_partition_file_institutions(
    dp_rundir: Path, tmp_path: Path
) -> None:
    """Without truth.csv (real FeTS2022 data): the institution attack uses the partition ids the
    server holds beside each record; scanner and tumour-volume attacks are not applicable."""
    run = copy_run(dp_rundir, tmp_path)
    res = CliRunner().invoke(app, ["audit", "features", str(run)])
    assert res.exit_code == 0, res.output
    doc = json.loads((run / "audit" / "features.json").read_text())
    attacks = {a["attack"] for a in doc["attacks"]}
    assert "institution-inference" in attacks and "linkage" in attacks
    assert not attacks & {"scanner-inference", "attribute-inference"}
    assert {n["attack"] for n in doc["not_applicable"]} >= {"scanner-inference",
                                                             "attribute-inference"}  # fmt: skip
    assert doc["institution_source"].startswith("partition file")


@pytest.mark.slow
def test_local_dp_lowers_linkage(dp_rundir: Path, tiny_federation: Path, tmp_path: Path):
    dp_rundir = copy_run(dp_rundir, tmp_path)  # the audit writes RUNDIR/audit
    truth = tiny_federation / "truth.csv"
    dp = run_feature_attacks(dp_rundir, truth)
    top1 = next(a for a in dp["attacks"] if a["target"] == "top-1")
    assert top1["value"] < 1.0  # epsilon 4 per patient on 4 dimensions: not every patient found
    assert {"attack": "reconstruction", "why": dp["not_applicable"][0]["why"]} in dp[
        "not_applicable"]  # fmt: skip


def test_secure_aggregate_has_nothing_per_case_to_attack(dp_rundir: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    data = tomllib.loads((dp_rundir / "protocol.toml").read_text())
    data["release"] = {"mode": "secure-aggregate", "bounds": data["release"]["bounds"],
                       "projection": "random", "dimension": 4, "projection_seed": 3}  # fmt: skip
    data["clustering"]["secure"] = {"epsilon": 1.0, "delta": 1e-6, "min_sites_per_aggregate": 2}
    (run / "protocol.toml").write_text(tomli_w.dumps(data))
    shutil.copy(dp_rundir / "bounds.json", run / "bounds.json")
    doc = run_feature_attacks(run, tmp_path / "unused.csv")
    assert doc["attacks"] == []
    assert len(doc["not_applicable"]) == 5
    assert all("no per-case vector" in n["why"] for n in doc["not_applicable"])
