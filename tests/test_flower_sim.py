"""A tiny federation in Flower's simulation engine: SecAgg+ and plain FedAvg, and the CFFL
phases (global, then per-cluster finetuning with the small-cluster fallback)."""

from __future__ import annotations

import numpy as np
import pytest
from flower_standin import make_task, write_assignments, write_protocol

from securefed.federated.engine import phase_config, run_phase, run_study_phases
from securefed.federated.flower.config import SiteSettings
from securefed.protocol import load_protocol

LAYOUT = {
    1: [("train", 0)] * 3 + [("val", 0)] * 2,
    2: [("train", 0)] * 2 + [("train", 1)] + [("val", 1)],
    3: [("train", 1)] * 3 + [("train", 2)] + [("val", 1), ("val", 2)],
}


def _setup(tmp_path, aggregation, rounds=1):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proto = write_protocol(tmp_path, aggregation=aggregation, rounds=rounds, finetune=1)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(proto))
             for p in LAYOUT]  # fmt: skip
    return load_protocol(proto), asg, sites


def test_secagg_matches_fedavg(tmp_path):
    results = {}
    for agg in ("secagg+", "fedavg"):
        loaded, asg, sites = _setup(tmp_path / agg, agg)
        cfg = phase_config(loaded, out_dir=tmp_path / agg / "global",
                           sites={1: 3, 2: 3, 3: 4}, assignments=asg)  # fmt: skip
        results[agg] = run_phase(cfg, sites, task=make_task())
    sec, avg = results["secagg+"], results["fedavg"]
    assert sec.best_round == avg.best_round == 1
    assert [h["round"] for h in sec.history] == [1]
    assert sec.history[0]["num_sites"] == 3 and sec.history[0]["num_train"] == 10
    assert [s["partition-id"] for s in sec.history[0]["sites"]] == [1, 2, 3]
    assert sec.history[0]["val"]["num_val"] == 5
    for a, b in zip(sec.best_weights, avg.best_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)  # SecAgg+ quantisation only
    # The weights really changed from the seeded initial model.
    assert (tmp_path / "fedavg" / "global" / "best.npz").is_file()


@pytest.mark.slow
def test_cffl_phases_with_small_cluster_fallback(tmp_path):
    loaded, asg, sites = _setup(tmp_path, "secagg+")
    study = run_study_phases(loaded, sites, asg, tmp_path / "phases", task=make_task())
    assert study.global_result.best_round == 1
    # cluster 0: sites 1 and 2; cluster 1: sites 2 and 3; cluster 2: only site 3 -> fallback.
    c0, c1, c2 = (study.clusters[c] for c in (0, 1, 2))
    assert c0.status == c1.status == "finetuned"
    assert c0.sites == {1: 3, 2: 2} and c1.sites == {2: 1, 3: 3}
    assert c2.status == "fallback-global" and "1 site(s)" in c2.reason
    assert c2.weights_path == study.global_result.best_weights_path
    # Round 0 (the global model) is a candidate in the cluster phases.
    assert [h["round"] for h in c0.result.history] == [0, 1]
    assert c0.result.best_round in (0, 1)
    # Cluster 0 is validated on cluster 0's validation cases only (site 1's two cases).
    assert c0.result.history[0]["val"]["num_val"] == 2
