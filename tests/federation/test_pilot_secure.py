"""`securefed pilot` with secure-aggregate features (release.mode = secure-aggregate) and a DP
test summary over the deployment, on the tiny federation (3 sites, one round per phase); its own
file so that `make test` runs it on one pytest-xdist worker while the plain pilot
(test_pilot.py) runs on another."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.deployment import groups_alive
from support.study import TINY, tiny_secure_protocol

from securefed.clustering.assignments import read_assignments
from securefed.privacy.ledger import read_ledger
from securefed.study.pilot import run_pilot


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_secure_aggregate_pilot_clusters_over_masked_rounds(tmp_path: Path) -> None:
    """release.mode = secure-aggregate over the deployment: no features stage message, the
    clustering as signed masking keys and masked rounds (only noised sums open), each site
    assigning its own cases to the public centroids, every site in every cluster's phase, and
    an evaluation that releases no per-site value (the protocol claims a finite epsilon) and
    one DP test summary (evaluation.dp_summary) whose masked vectors open only as their sum."""
    proto = tiny_secure_protocol(tmp_path)
    data = tomllib.loads(proto.read_text())  # and the DP test summary over the 3 training sites
    data.setdefault("evaluation", {})["dp_summary"] = {"epsilon": 1.0, "min_sites": 3}
    proto.write_bytes(tomli_w.dumps(data).encode())
    result = run_pilot(tmp_path / "pilot", str(proto), preset=TINY, stage_timeout_s=600,
                       network="loopback", reply_slot_s=15, log=lambda _: None)  # fmt: skip
    study = tmp_path / "pilot" / "study"
    stages = sorted(p.name for p in (study / "stages").iterdir())
    assert "features" not in stages and "secure-keys" in stages and "secure-assign" in stages
    rounds = [s for s in stages if s.startswith("secure-round-")]
    assert rounds and all(
        sorted(p.name for p in (study / "stages" / r / "masked").iterdir())
        == [f"partition-{p}.bin" for p in (1, 2, 3)] for r in rounds
    )  # fmt: skip
    clustering = result.results["clustering"]
    assert clustering["mode"] == "secure-aggregate" and clustering["k"] == 2
    for pid in (1, 2, 3):
        own = read_assignments(tmp_path / "pilot" / "sites" / f"site-{pid}" / "work"
                               / "clusters.csv")  # fmt: skip
        assert {r.partition_id for r in own} == {pid} and {r.cluster for r in own} <= {0, 1}
        log = tmp_path / "pilot" / "sites" / f"site-{pid}" / "work" / "egress.jsonl"
        kinds = {json.loads(line)["stage"] for line in log.read_text().splitlines()}
        assert not any(k.startswith("features") for k in kinds), "no per-case release"
    phases = result.results["phases"]["clusters"]
    assert all(sorted(info["sites"]) == [1, 2, 3] for info in phases.values())
    # no per-site test value; one DP summary over the training sites, charged once at each
    assert all(r["num_test"] == 0 for r in result.results["methods"]["cffl"]["per_site"])
    summary = json.loads((study / "stages" / "dp-test" / "summary.json").read_text())
    assert "error" not in summary, summary
    assert summary["cffl"]["sites"] == 3 and summary["cffl"]["dp"]["epsilon"] == 1.0
    assert result.results["evaluation_release"].startswith("a DP test summary over 3 training")
    for pid in (1, 2, 3):
        ledger = read_ledger(tmp_path / "pilot" / "sites" / f"site-{pid}" / "work"
                             / "ledger.jsonl")  # fmt: skip
        assert "evaluation/test-summary" in ledger.committed
    assert all(v.startswith("verified") for v in result.audit.values()), result.audit
    assert groups_alive(result.process_groups) == []
