"""A tiny federation in Flower's simulation engine: SecAgg+ matches plain FedAvg, and a round
really moves the weights. The suite's one simulation on real Ray (``real_ray``): every other test
runs the engine with its ClientApps in the test process (tests/support/inprocess.py)."""

from __future__ import annotations

import numpy as np
import torch
from support.flower import make_task, write_assignments, write_protocol

from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
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
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(proto),
                          assignments=str(asg))
             for p in LAYOUT]  # fmt: skip
    return load_protocol(proto), asg, sites


def test_secagg_matches_fedavg(tmp_path, real_ray):
    results = {}
    for agg in ("secagg+", "fedavg"):
        loaded, asg, sites = _setup(tmp_path / agg, agg)
        cfg = phase_config(loaded, out_dir=tmp_path / agg / "global",
                           sites={1: 3, 2: 3, 3: 4}, assignments=asg)  # fmt: skip
        results[agg] = run_phase(cfg, sites, task=make_task())
    sec, avg = results["secagg+"], results["fedavg"]
    assert sec.best_round == avg.best_round == 1
    assert [h["round"] for h in sec.history] == [1]
    assert sec.history[0]["num_sites"] == 3
    assert sec.history[0]["weight_sum"] == 10
    assert [s["partition-id"] for s in sec.history[0]["sites"]] == [1, 2, 3]
    assert sec.history[0]["val"]["num_val"] == 5
    for a, b in zip(sec.best_weights, avg.best_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)  # SecAgg+ quantisation only
    # The weights really changed from the seeded initial model every site starts from.
    task = make_task()
    torch.manual_seed(loaded.protocol.training.seed)
    initial = task.get_weights(task.build_model(loaded.protocol.training))
    assert len(initial) == len(avg.best_weights)
    moved = [float(np.abs(a - b).max()) for a, b in zip(avg.best_weights, initial, strict=True)]
    assert max(moved) > 1e-4, moved


def test_the_suite_runs_the_engine_without_ray_unless_a_test_asks(real_ray) -> None:
    """tests/conftest.py swaps Flower's Ray backend for support.inprocess's for the session;
    ``real_ray`` (this test) puts Ray's back, only for its test."""
    import os

    import pytest
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from support.inprocess import InProcessBackend, use_inprocess_backend

    if os.environ.get("SECUREFED_TEST_RAY") == "1":
        pytest.skip("SECUREFED_TEST_RAY=1: every simulation runs on Ray")
    assert raybackend.RayBackend is not InProcessBackend  # real_ray
    with use_inprocess_backend():
        assert raybackend.RayBackend is InProcessBackend
    assert raybackend.RayBackend is not InProcessBackend
