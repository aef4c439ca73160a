"""A site drops out in the middle of a SecAgg+ round (its ClientApp crashes after the key
exchange, in the masked-vector stage): with enough sites left the round completes; otherwise the
phase fails with a clear error, and rerunning it resumes from the last completed round at the next
round number (the sites train in each round number once: the failed round is lost, not rerun)."""

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

    # Two of three drop in round 2 of 3: no aggregate, clear error, round 1 is checkpointed.
    (tmp_path / "three").mkdir()
    three = write_protocol(tmp_path / "three", aggregation="secagg+", rounds=3, timeout=30)
    loaded3 = load_protocol(three)
    sites3 = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(three),
                           assignments=str(asg), work_dir=str(tmp_path / f"site{p}"))
              for p in LAYOUT]  # fmt: skip
    crash.write_text("2:2 3:2")
    cfg = phase_config(loaded3, out_dir=tmp_path / "b", sites=counts, assignments=asg)
    with pytest.raises(TooFewParticipantsError, match="round 2"):
        run_phase(cfg, sites3, task=make_task())
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["status"] == "failed"
    assert state["completed_round"] == 1
    assert state["started_round"] == 2
    assert "rerun the phase to resume (at round 3" in state["error"]

    # The sites come back: the rerun resumes at round 3 (round 1 is not trained again, round 2,
    # in which site 1 trained, is lost: its state folder would refuse it).
    crash.write_text("")
    resumed = run_phase(cfg, sites3, task=make_task())
    assert [h["round"] for h in resumed.history] == [1, 3]
    assert resumed.lost_rounds == (2,)
    assert resumed.history[0] == state["history"][0]
    assert resumed.history[1]["num_sites"] == 3
