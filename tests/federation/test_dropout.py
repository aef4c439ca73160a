"""A site drops out in the middle of a SecAgg+ round (its ClientApp crashes after the key
exchange, in the masked-vector stage): with enough sites left the round completes; otherwise the
phase fails with a clear error, and rerunning it resumes from the last completed round."""

from __future__ import annotations

import json

import pytest
from support.flower import make_task, write_assignments, write_protocol

from securefed.errors import TooFewParticipantsError
from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.protocol import load_protocol

LAYOUT = {p: [("train", 0)] * 2 + [("val", 0)] for p in (1, 2, 3)}


@pytest.mark.slow
def test_dropout_completes_then_fails_then_resumes(tmp_path, monkeypatch):
    proto = write_protocol(tmp_path, aggregation="secagg+", rounds=2, timeout=30)
    loaded = load_protocol(proto)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(proto),
                          assignments=str(asg))
             for p in LAYOUT]  # fmt: skip
    crash = tmp_path / "crash.txt"
    monkeypatch.setenv("SECUREFED_TEST_CRASH", str(crash))
    counts = {1: 2, 2: 2, 3: 2}

    # One of three drops in round 2: threshold 2 of 3 shares -> the round completes with 2.
    crash.write_text("3:2")
    ok = run_phase(phase_config(loaded, out_dir=tmp_path / "a", sites=counts, assignments=asg),
                   sites, task=make_task())  # fmt: skip
    assert [h["num_sites"] for h in ok.history] == [3, 2]

    # Two of three drop in round 2: no aggregate, clear error, round 1 is checkpointed.
    crash.write_text("2:2 3:2")
    cfg = phase_config(loaded, out_dir=tmp_path / "b", sites=counts, assignments=asg)
    with pytest.raises(TooFewParticipantsError, match="round 2"):
        run_phase(cfg, sites, task=make_task())
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["status"] == "failed" and state["completed_round"] == 1
    assert "rerun the phase to resume" in state["error"]

    # The sites come back: the rerun resumes at round 2 (round 1 is not trained again).
    crash.write_text("")
    resumed = run_phase(cfg, sites, task=make_task())
    assert [h["round"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == state["history"][0]
    assert resumed.history[1]["num_sites"] == 3
