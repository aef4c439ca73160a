"""What a site sends in training follows its own protocol copy (securefed.protocol.egress): under a
protocol that claims a finite epsilon no train count, loss, validation Dice or count, and no
cluster membership computed on raw vectors leaves the site; a plain protocol keeps the paper's
values."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from support.flower import make_task, write_assignments, write_protocol
from support.privacy import COLUMNS, reference_matrix

from securefed.errors import ProtocolError, TrainingError
from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config
from securefed.privacy.bounds import derive_bounds, write_bounds
from securefed.protocol import load_protocol, parse_protocol

LAYOUT = {1: [("train", 0), ("train", 0), ("train", 1), ("val", 0), ("val", 1)]}


def _release(folder: Path, mode: str) -> str:
    if mode == "plain":
        return ""
    bounds = derive_bounds(reference_matrix(), COLUMNS, source="synthetic test data")
    digest = write_bounds(bounds, folder / "bounds.json")
    extra = 'epsilon = 2.0\ndelta = 1e-6\nmechanism = "gaussian"\n' if mode == "local-dp" else ""
    return (
        f'[release]\nmode = "{mode}"\n{extra}'
        f'bounds = {{ file = "bounds.json", sha256 = "{digest}" }}\n'
        '[clustering]\nscaling = "declared-bounds"\n'
    )


def _client(tmp_path: Path, mode: str) -> SiteClient:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proto = write_protocol(tmp_path)
    text = proto.read_text().replace("total_epsilon = 1.0", "total_epsilon = 4.0")
    proto.write_text(text + _release(tmp_path, mode))
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    site = SiteSettings(1, str(tmp_path), str(proto), work_dir=str(tmp_path / "w"),
                        assignments=str(asg))  # fmt: skip
    return SiteClient(make_task(), site)


def _config(client: SiteClient, cluster: int = -1) -> dict:
    # Coordinates only: the site takes lr and steps from its protocol.
    return {"protocol-hash": client.loaded.sha256, "server-round": 1, "cluster": cluster}


def test_policy_per_release_mode(tmp_path: Path) -> None:
    plain = _client(tmp_path / "a", "plain").egress
    assert (plain.weights, plain.train_loss, plain.validation, plain.membership) == (
        "train-counts", True, True, "raw"
    )  # fmt: skip
    dp = _client(tmp_path / "b", "local-dp").egress
    assert (dp.weights, dp.train_loss, dp.validation, dp.membership) == (
        "uniform", False, False, "released"
    )  # fmt: skip
    secure = _client(tmp_path / "c", "secure-aggregate").egress
    assert secure.membership == "all-sites"
    assert secure.weights == "uniform"
    assert any("uniform" in line for line in dp.describe())


def test_plain_protocol_sends_counts_loss_and_dice(tmp_path: Path) -> None:
    client = _client(tmp_path, "plain")
    params = client.get_parameters({})
    _, n, metrics = client.fit(params, _config(client))
    assert n == 3
    assert "loss" in metrics
    _, n_val, ev = client.evaluate(params, _config(client))
    assert n_val == 2
    assert ev["num_val"] == 2
    assert "dice_mean" in ev


@pytest.mark.parametrize("mode", ["local-dp", "secure-aggregate"])
def test_dp_protocol_sends_no_patient_derived_training_value(tmp_path: Path, mode: str) -> None:
    client = _client(tmp_path, mode)
    params = client.get_parameters({})
    for cluster in (-1, 0, 1):
        weights, n, metrics = client.fit(params, _config(client, cluster))
        assert n == 1
        assert metrics == {}
        assert any(not np.allclose(a, b) for a, b in zip(params, weights, strict=True))
    loss, n_val, ev = client.evaluate(params, _config(client))
    assert (loss, n_val, ev) == (0.0, 0, {"partition-id": 1})


def test_all_sites_membership_sends_a_zero_weight_for_an_empty_cluster(tmp_path: Path) -> None:
    secure = _client(tmp_path / "s", "secure-aggregate")
    assert secure.egress.cluster_weights == "masked-counts"
    params = secure.get_parameters({})
    sent, n, metrics = secure.fit(params, _config(secure, cluster=2))  # no case of cluster 2
    assert n == 1  # the clear FedAvg weight stays the public 1
    assert metrics == {}
    assert len(sent) == len(params) + 1
    assert all(not np.any(a) for a in sent)  # a zero update and a zero weight
    plain = _client(tmp_path / "p", "plain")
    with pytest.raises(TrainingError, match="no train cases"):
        plain.fit(plain.get_parameters({}), _config(plain, cluster=2))


def test_cluster_phase_is_the_case_weighted_average_of_its_holders(tmp_path: Path) -> None:
    """Three sites in cluster 0's federation, only two hold cases of it (2 and 1 train cases):
    the opened means of what they send decode to the holders' case-weighted FedAvg, not to a
    dilution by the site that holds none; a round where nobody holds the cluster keeps the
    start model."""
    from securefed.federation.weighting import decode_weighted, weighted_update

    secure = _client(tmp_path / "s", "secure-aggregate")
    start = secure.get_parameters({})
    sent, _, _ = secure.fit(start, _config(secure, cluster=0))  # 2 train cases of cluster 0
    w_max = secure.loaded.protocol.secure_aggregation.max_weight
    assert float(sent[-1][0]) == pytest.approx(2 / w_max)
    trained_a = [s + u / (2 / w_max) for s, u in zip(start, sent[:-1], strict=True)]
    rng = np.random.default_rng(0)
    trained_b = [s + rng.normal(0, 1e-2, s.shape).astype(s.dtype) for s in start]
    from_b = weighted_update(trained_b, start, 1, w_max)
    from_c = weighted_update(start, start, 0, w_max)  # holds no case of cluster 0
    mean = [(a + b + c) / 3 for a, b, c in zip(sent, from_b, from_c, strict=True)]
    new = decode_weighted(start, mean)
    for s, a, b, got in zip(start, trained_a, trained_b, new, strict=True):
        want = s + (2 * (a - s) + 1 * (b - s)) / 3  # the holders' FedAvg, weights 2 and 1
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(new, trained_b, strict=True))
    nobody = decode_weighted(start, from_c)
    assert all(np.array_equal(a, b) for a, b in zip(nobody, start, strict=True))
    with pytest.raises(TrainingError, match="weighted aggregate"):
        decode_weighted(start, [*sent[:-2], sent[-1]])


def test_phase_config_follows_the_policy(tmp_path: Path) -> None:
    asg = tmp_path / "clusters.csv"
    plain = load_protocol(_client(tmp_path / "a", "plain").site.protocol)
    cfg = phase_config(plain, out_dir=tmp_path / "o", sites={1: 3, 2: 5}, assignments=asg,
                       cluster=0)  # fmt: skip
    assert cfg.validate
    assert cfg.eval_round_zero
    assert cfg.max_weight == 5
    dp = load_protocol(_client(tmp_path / "b", "local-dp").site.protocol)
    cfg = phase_config(dp, out_dir=tmp_path / "o", sites={1: None, 2: None}, assignments=asg,
                       cluster=0)  # fmt: skip
    assert not cfg.validate
    assert not cfg.eval_round_zero
    assert cfg.max_weight == 1


def test_secure_aggregate_cffl_needs_a_secure_aggregate_and_an_honest_weight_share(
    tmp_path: Path,
) -> None:
    client = _client(tmp_path, "secure-aggregate")
    data = tomllib.loads(Path(client.site.protocol).read_text())
    assert "cffl" in load_protocol(client.site.protocol).protocol.training.baselines
    fedavg = {**data, "training": {**data["training"], "aggregation": "fedavg",
                                   "min_sites_per_aggregate": 1}}  # fmt: skip
    with pytest.raises(ProtocolError, match="needs 'secagg\\+'"):
        parse_protocol(fedavg)
    dp = {"enabled": True, "epsilon": 1.0, "amplification": "none"}
    dpsgd = {**data, "training": {**data["training"], "dp_sgd": dp}}
    assert parse_protocol(dpsgd).training.dp_sgd.weight_noise == 32.0  # offered (noised weights)
    secure = {"min_sites_per_aggregate": 3, "max_colluding_sites": 2}  # 2 training sites
    colluding = {**dpsgd, "clustering": {**data["clustering"], "secure": secure}}
    with pytest.raises(ProtocolError, match="needs an honest site in every aggregate"):
        parse_protocol(colluding)
    no_cffl = {**colluding, "training": {**dpsgd["training"], "baselines": ["local", "fedavg"]}}
    parse_protocol(no_cffl)
