"""The CFFL phases in Flower's simulation engine on a tiny federation: global FedAvg, then
per-cluster finetuning with the small-cluster fallback."""

from __future__ import annotations

import pytest
from support.flower import make_task, write_assignments, write_protocol

from securefed.federation.config import SiteSettings
from securefed.protocol import load_protocol
from securefed.study.cffl import run_cffl_phases

LAYOUT = {
    1: [("train", 0)] * 3 + [("val", 0)] * 2,
    2: [("train", 0)] * 2 + [("train", 1)] + [("val", 1)],
    3: [("train", 1)] * 3 + [("train", 2)] + [("val", 1), ("val", 2)],
}


@pytest.mark.slow
def test_cffl_phases_with_small_cluster_fallback(tmp_path):
    proto = write_protocol(tmp_path, aggregation="secagg+", rounds=1, finetune=1)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(proto),
                          assignments=str(asg))
             for p in LAYOUT]  # fmt: skip
    loaded = load_protocol(proto)
    seen: list[tuple[str, int, int]] = []
    study = run_cffl_phases(loaded, sites, asg, tmp_path / "phases", task=make_task(),
                            progress=lambda *a: seen.append(a))  # fmt: skip
    assert study.global_result.best_round == 1
    # a progress bar per phase: rounds done of the phase's rounds, ending complete
    assert {name for name, _, _ in seen} == {"global", "cluster-0", "cluster-1"}
    assert [x for x in seen if x[0] == "global"][-1] == ("global", 1, 1)
    assert ("cluster-0", 0, 1) in seen and seen[-1] == ("cluster-1", 1, 1)
    # cluster 0: sites 1 and 2; cluster 1: sites 2 and 3; cluster 2: only site 3 -> fallback.
    c0, c1, c2 = (study.clusters[c] for c in (0, 1, 2))
    assert c0.status == c1.status == "finetuned"
    assert c0.sites == {1: 3, 2: 2}
    assert c1.sites == {2: 1, 3: 3}
    assert c2.status == "fallback-global"
    assert "1 site(s)" in c2.reason
    assert c2.weights_path == study.global_result.best_weights_path
    # Round 0 (the global model) is a candidate in the cluster phases.
    assert [h["round"] for h in c0.result.history] == [0, 1]
    assert c0.result.best_round in (0, 1)
    # Cluster 0 is validated on cluster 0's validation cases only (site 1's two cases).
    assert c0.result.history[0]["val"]["num_val"] == 2
