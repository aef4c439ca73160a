"""Fast contracts of the Flower area: checkpoints, phase/node config, metrics, assignments."""

from __future__ import annotations

import numpy as np
import pytest
from support.flower import write_protocol

from securefed.errors import ConfigError, EvaluationError, TrainingError
from securefed.federation.config import PhaseConfig, SiteSettings
from securefed.federation.metrics import pooled_dice, site_summary
from securefed.federation.phase import phase_config
from securefed.protocol import load_protocol
from securefed.training.checkpoints import (
    PhaseCheckpoint,
    PhaseState,
    load_weights,
    save_weights,
)


def test_weights_round_trip_without_pickle(tmp_path):
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5]), np.zeros(0)]
    save_weights(tmp_path / "w.npz", weights)
    back = load_weights(tmp_path / "w.npz")
    assert [w.dtype for w in back] == [w.dtype for w in weights]
    for a, b in zip(weights, back, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TrainingError, match="dtype object"):  # object arrays are never written
        save_weights(tmp_path / "bad.npz", [np.array([object()], dtype=object)])
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_resume_state_and_refusal(tmp_path):
    ckpt = PhaseCheckpoint(tmp_path)
    state = ckpt.load_state("abc")
    assert state.completed_round == -1
    state.completed_round, state.best_round, state.best_score = 2, 1, 0.5
    ckpt.save_round(state, [np.ones(3)], is_best=False)
    again = ckpt.load_state("abc")
    assert again == PhaseState(config_digest="abc", completed_round=2, best_round=1, best_score=0.5)
    with pytest.raises(ConfigError, match="different phase configuration"):
        ckpt.load_state("other")
    ckpt.last_path.unlink()
    with pytest.raises(ConfigError, match="missing"):
        ckpt.load_state("abc")


def _cfg(**kw):
    base = dict(out_dir="/tmp/x", sites="1,2,3", protocol_hash="sha256:" + "0" * 64, rounds=2,
                lr=0.1)  # fmt: skip
    base.update(kw)
    return PhaseConfig(**base)


def test_phase_config_run_config_round_trip_and_digest():
    cfg = _cfg(phase="cluster", cluster=2, eval_round_zero=True, aggregation="fedavg")
    run_config = cfg.to_run_config()
    assert run_config["reconstruction-threshold"] == 2
    assert PhaseConfig.from_run_config(run_config) == cfg
    # The digest ignores where results go and how long to wait, not what is trained.
    assert _cfg(out_dir="/elsewhere", timeout_s=5).digest() == _cfg().digest()
    assert _cfg(lr=0.2).digest() != _cfg().digest()
    assert cfg.site_ids == (1, 2, 3)
    assert cfg.name == "cluster-2"


@pytest.mark.parametrize(
    "kw",
    [dict(phase="cluster"), dict(aggregation="ckks"), dict(timeout_s=0), dict(sites="1,1"),
     dict(sites=""), dict(out_dir=""), dict(server_lr=0), dict(server_momentum=1.0)],
)  # fmt: skip
def test_phase_config_rejects(kw):
    with pytest.raises(ConfigError):
        _cfg(**kw)


def test_site_settings_node_config():
    site = SiteSettings(partition_id=4, data_dir="/data/fets 1", protocol="/p/protocol.toml")
    text = site.to_node_config()
    assert text.startswith("partition-id=4 ")
    assert '"/data/fets 1"' in text
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([text])
    assert SiteSettings.from_node_config(parsed) == site
    with pytest.raises(ConfigError, match="data-dir"):
        SiteSettings.from_node_config({"partition-id": 1})


def test_site_summary_and_pooled_dice():
    s1 = site_summary({"cases": [{"dice_tc": 1.0, "dice_wt": 0.5, "dice_et": 0.0}] * 3})
    s2 = site_summary({"dice_tc": [0.0], "dice_wt": [0.0], "dice_et": [0.0]})
    assert s1["num_val"] == 3
    assert s1["dice_mean"] == pytest.approx(0.5)
    pooled = pooled_dice([s1, s2, {"num_val": 0, "dice_mean": 0.9}])
    assert pooled["num_val"] == 4
    assert pooled["dice_mean"] == pytest.approx(0.5 * 3 / 4)
    assert pooled["dice_tc"] == pytest.approx(0.75)
    with pytest.raises(EvaluationError):
        site_summary({"dice_tc": [float("nan")], "dice_wt": [0.0], "dice_et": [0.0]})


def test_phase_config_from_protocol(tmp_path):
    loaded = load_protocol(write_protocol(tmp_path, rounds=4, finetune=2))
    g = phase_config(loaded, out_dir=tmp_path / "g", sites={3: 40, 1: 7}, assignments=tmp_path)
    assert g.sites == "1,3"
    assert g.rounds == 4
    assert not g.eval_round_zero
    assert g.max_weight == 40.0  # tightened to the largest site count (quantisation precision)
    assert g.protocol_hash == loaded.sha256
    assert g.aggregation == "secagg+"
    c = phase_config(loaded, out_dir=tmp_path / "c", sites={1: 2, 3: 2}, assignments=tmp_path,
                     cluster=1, initial_weights=tmp_path / "best.npz")  # fmt: skip
    assert c.rounds == 2
    assert c.lr == 0.2
    assert c.eval_round_zero
    assert c.cluster == 1


def test_secagg_threshold_must_be_below_shares(tmp_path):
    from securefed.federation.server_app import _secagg_workflow

    with pytest.raises(ConfigError, match="reconstruction_threshold"):
        _secagg_workflow(_cfg(num_shares=3, reconstruction_threshold=3))
    assert _secagg_workflow(_cfg()).timeout == 120.0  # never None: a drop cannot block forever


def test_default_task_is_securefeds_dynunet(tmp_path):
    from securefed.federation.task import default_task

    task = default_task()
    loaded = load_protocol(write_protocol(tmp_path))
    model = task.build_model(loaded.protocol.training)
    weights = task.get_weights(model)
    # Shared DynUNet submodules are sent once: exactly the paper's ~1.4 M parameters.
    assert sum(w.size for w in weights) == sum(p.numel() for p in model.parameters())
    assert 1_300_000 < sum(w.size for w in weights) < 1_500_000
    task.set_weights(model, [w * 0 for w in weights])
    assert all(not w.any() for w in task.get_weights(model))
    assert all(not v.any() for v in model.state_dict().values())
    with pytest.raises(ConfigError, match="distinct tensors"):
        task.set_weights(model, weights[:-1])


def test_server_momentum_is_fedavgm_on_the_aggregate_and_survives_resume(tmp_path):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from securefed.federation.server_app import PhaseStrategy

    cfg = _cfg(out_dir=str(tmp_path), server_lr=1.0, server_momentum=0.5, min_sites=1)
    strategy = PhaseStrategy(cfg, grid=None)
    assert strategy.server_opt
    assert not PhaseStrategy(_cfg(), None).server_opt

    def one_round(rnd, start, site_models, strategy=strategy):
        strategy.configure_fit(rnd, ndarrays_to_parameters([start]), None)
        results = [
            (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([m]), n, {"loss": 0.0}))
            for m, n in site_models
        ]
        params, metrics = strategy.aggregate_fit(rnd, results, [])
        return parameters_to_ndarrays(params)[0], metrics

    w0 = np.array([1.0, 2.0], dtype=np.float32)
    # FedAvg of the sites (weights 1 and 3) is [0.5, 1.0]: update d = w0 - avg = [0.5, 1.0].
    w1, metrics = one_round(1, w0, [(np.array([0.0, 2.0], np.float32), 1),
                                 (np.array([2 / 3, 2 / 3], np.float32), 3)])  # fmt: skip
    assert metrics["num_sites"] == 2
    np.testing.assert_allclose(w1, [0.5, 1.0], rtol=1e-6)  # first step: v = d
    # Second round: sites all return w1 - [0.1, 0.1]; v = 0.5 v + 0.1 -> w2 = w1 - v.
    w2, _ = one_round(2, w1, [(w1 - 0.1, 2), (w1 - 0.1, 2)])
    np.testing.assert_allclose(w2, w1 - (0.5 * np.array([0.5, 1.0]) + 0.1), rtol=1e-6)
    assert w2.dtype == np.float32
    # The velocity is checkpointed with the round and read back on resume.
    ckpt = PhaseCheckpoint(tmp_path)
    state = ckpt.load_state("abc")
    state.completed_round = 2
    ckpt.save_round(state, [w2], is_best=False, momentum=strategy.velocity)
    v2 = 0.5 * np.array([0.5, 1.0]) + 0.1
    np.testing.assert_allclose(ckpt.load_momentum()[0], v2, rtol=1e-6)
    assert PhaseCheckpoint(tmp_path / "none").load_momentum() is None
    # A resumed phase (a new server process) continues the same update from the checkpoint.
    resumed = PhaseStrategy(cfg, grid=None)
    resumed.velocity = ckpt.load_momentum()
    w3, _ = one_round(3, w2, [(w2 - 0.2, 1)], strategy=resumed)
    np.testing.assert_allclose(w3, w2 - (0.5 * v2 + 0.2), rtol=1e-5)


def test_flower_app_config_declares_every_phase_field():
    """`flwr run --run-config` refuses keys the app does not declare in its pyproject.toml."""
    import tomllib
    from dataclasses import fields

    from securefed.federation.app import app_dir

    pyproject = app_dir() / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == set(_cfg().to_run_config())
    assert {f.name.replace("_", "-") for f in fields(PhaseConfig)} == set(declared)
