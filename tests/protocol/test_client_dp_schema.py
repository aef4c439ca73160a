"""``training.client_dp`` in the schema: SecAgg+ only, one DP training mechanism, a power-of-two
modulus that Flower's 2^32 sum keeps, at least one honest site per aggregate, its budget
counted in the study's total and in the site ledger's stages."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from securefed.errors import ProtocolError
from securefed.privacy.ledger import stage_allocations
from securefed.protocol import parse_protocol

DEMO = Path(__file__).resolve().parents[2] / "protocols" / "demo.toml"


def _data(**client_dp) -> dict:
    data = tomllib.loads(DEMO.read_text())
    data["training"]["client_dp"] = {"enabled": True, "epsilon": 4.0, "max_sites": 6, **client_dp}
    return data


def test_client_dp_counts_in_the_budget_and_the_ledger_stages() -> None:
    p = parse_protocol(_data())
    assert p.training.dp_training == "client-dp"
    assert p.claims_finite_epsilon
    assert p.allocated_budget() == (4.0, 1e-6)
    assert stage_allocations(p) == {"training": (4.0, 1e-6)}
    data = _data(epsilon=9.0)
    with pytest.raises(ProtocolError, match="below the sum of the stage allocations"):
        parse_protocol(data)


def test_client_dp_needs_secagg_alone_and_an_epsilon() -> None:
    data = _data()
    data["training"]["aggregation"] = "fedavg"
    with pytest.raises(ProtocolError, match="needs training.aggregation = 'secagg\\+'"):
        parse_protocol(data)
    data = _data()
    data["training"]["dp_sgd"] = {"enabled": True, "epsilon": 2.0}
    data["training"]["client_dp"]["epsilon"] = 2.0
    with pytest.raises(ProtocolError, match="choose one DP training mechanism"):
        parse_protocol(data)
    data = _data()
    del data["training"]["client_dp"]["epsilon"]
    with pytest.raises(ProtocolError, match="needs training.client_dp.epsilon"):
        parse_protocol(data)


def test_client_dp_modulus_and_collusion_limits() -> None:
    data = _data()
    data["secure_aggregation"]["quantization_range"] = 3_000_000
    with pytest.raises(ProtocolError, match="power of two"):
        parse_protocol(data)
    # reconstruction_threshold 2, min_sites_per_aggregate 2: one colluder leaves one honest site
    assert parse_protocol(_data(max_colluding_sites=1)).training.client_dp.max_colluding_sites == 1
    with pytest.raises(ProtocolError, match="at least one honest site"):
        parse_protocol(_data(max_colluding_sites=2))
    with pytest.raises(ProtocolError, match="clip_norm"):
        parse_protocol(_data(clip_norm=float("inf")))


def test_the_most_sites_of_an_aggregate_comes_from_the_protocol() -> None:
    """Hostile coordinator, item 10: ``num-sites`` used to come from the server's message, so
    different values to different sites shrank an honest partner's noise share. Every party now
    reads it from the protocol: declared, or the listed sites."""
    data = _data()
    del data["training"]["client_dp"]["max_sites"]
    with pytest.raises(ProtocolError, match="client_dp.max_sites"):
        parse_protocol(data)
    assert parse_protocol(_data(max_sites=9)).client_dp_max_sites() == 9
