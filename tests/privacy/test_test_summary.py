"""The DP test summary's plan (evaluation.dp_summary, securefed.privacy.test_summary): counted in
the study's budget and the ledger's stages, only under a finite epsilon, its sensitivity holding
for neighbouring test sets whatever the model scored, its vector and decoding."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import PrivacyError, ProtocolError
from securefed.privacy.accounting import verify_claim
from securefed.privacy.ledger import stage_allocations
from securefed.privacy.noise import SHARE_GRID
from securefed.privacy.test_summary import (
    LENGTH,
    plan_test_summary,
    site_vector,
    summary_from_total,
)
from securefed.protocol import parse_protocol

DEMO = Path(__file__).resolve().parents[2] / "protocols" / "demo.toml"


def _data(neighbouring: str = "replace-one", **summary: object) -> dict:
    data = tomllib.loads(DEMO.read_text())
    data["privacy"]["total_epsilon"] = 8.0
    data["privacy"]["neighbouring"] = neighbouring
    data["training"]["client_dp"] = {"enabled": True, "epsilon": 7.0, "max_sites": 6}
    data.setdefault("evaluation", {})["dp_summary"] = {"epsilon": 1.0, **summary}
    return data


def test_the_summary_counts_in_the_budget_and_the_ledger_stages() -> None:
    p = parse_protocol(_data())
    assert p.allocated_budget() == (8.0, 2e-6)
    assert stage_allocations(p)["evaluation"] == (1.0, 1e-6)
    with pytest.raises(ProtocolError, match="below the sum of the stage allocations"):
        parse_protocol(_data(epsilon=1.5))
    assert plan_test_summary(parse_protocol(tomllib.loads(DEMO.read_text()))) is None  # off


def test_the_summary_needs_a_finite_epsilon_and_an_honest_site() -> None:
    data = tomllib.loads(DEMO.read_text())  # plain: the sites send their means in clear
    data.setdefault("evaluation", {})["dp_summary"] = {"epsilon": 1.0}
    data["privacy"]["total_epsilon"] = 8.0
    with pytest.raises(ProtocolError, match="plain protocol's sites send their test means"):
        parse_protocol(data)
    data = _data(min_sites=2)
    data["clustering"]["secure"] = {"max_colluding_sites": 1, "min_sites_per_aggregate": 3}
    parse_protocol(data)
    data["clustering"]["secure"]["max_colluding_sites"] = 2
    with pytest.raises(ProtocolError, match="an honest site's noise must remain"):
        parse_protocol(data)
    with pytest.raises(ProtocolError, match="delta must be > 0"):
        parse_protocol(_data(delta=0.0))


@pytest.mark.parametrize(("neighbouring", "per_case"), [("replace-one", 6), ("add-remove-one", 7)])
def test_the_plan_holds_its_claim(neighbouring: str, per_case: int) -> None:
    p = parse_protocol(_data(neighbouring))
    plan = plan_test_summary(p)
    assert plan is not None
    assert plan.sensitivity == pytest.approx(math.sqrt(per_case) * p.privacy.max_cases_per_patient)
    verify_claim(plan.event(), plan.epsilon, plan.delta)  # the accountant's epsilon <= 1
    assert plan.sigma == pytest.approx(plan.noise_multiplier * plan.sensitivity)


_DICE = st.lists(st.floats(-0.5, 1.5, allow_nan=False), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from([f"c{i}" for i in range(8)]), st.tuples(_DICE, _DICE),
                    min_size=1),
    st.tuples(_DICE, _DICE),
    st.tuples(_DICE, _DICE),
)  # fmt: skip
def test_neighbouring_test_sets_move_the_vector_by_at_most_the_sensitivity(
    cases: dict, replaced: tuple, added: tuple
) -> None:
    """Whatever the model scored (any Dice, clipped): replacing one case moves the vector by at
    most sqrt(6) (the count stays), adding one by at most sqrt(7)."""

    def vector(rows: dict) -> np.ndarray:
        return site_vector({k: v[0] for k, v in rows.items()}, {k: v[1] for k, v in rows.items()})

    base = vector(cases)
    assert np.array_equal(np.rint(base / SHARE_GRID) * SHARE_GRID, base)  # on the share grid
    one = next(iter(cases))
    assert np.linalg.norm(vector({**cases, one: replaced}) - base) <= math.sqrt(6) + 1e-12
    assert np.linalg.norm(vector({**cases, "new": added}) - base) <= math.sqrt(7) + 1e-12


def test_the_vector_clips_counts_and_refuses_a_half_scored_case() -> None:
    vec = site_vector({"a": [0.5, 2.0, -1.0], "b": [1.0, 1.0, 1.0]},
                      {"a": [0.25, 0.5, 0.75], "b": [0.0, 0.0, 0.0]})  # fmt: skip
    assert vec.shape == (LENGTH,)
    assert vec.tolist() == [1.5, 2.0, 1.0, 0.25, 0.5, 0.75, 2.0]
    with pytest.raises(PrivacyError, match="a score under one model only"):
        site_vector({"a": [1, 1, 1]}, {"b": [1, 1, 1]})
    with pytest.raises(PrivacyError, match="3 finite Dice"):
        site_vector({"a": [1, float("nan"), 1]}, {"a": [1, 1, 1]})


def test_the_total_decodes_to_means_and_says_when_it_cannot() -> None:
    plan = plan_test_summary(parse_protocol(_data()))
    assert plan is not None
    doc = summary_from_total(np.array([8.0, 9.0, 20.0, 4.0, 5.0, 6.0, 10.0]), plan, 3)
    assert doc["fedavg"]["dice_tc"] == 0.8 and doc["fedavg"]["dice_et"] == 1.0  # clipped
    assert doc["cffl"]["dice_mean"] == pytest.approx(0.5)
    assert doc["cffl"]["num_test"] == 10 and doc["cffl"]["sites"] == 3
    empty = summary_from_total(np.array([1.0] * 6 + [0.4]), plan, 3)
    assert empty["fedavg"]["dice_mean"] is None and empty["fedavg"]["num_test"] == 0
    with pytest.raises(PrivacyError, match="shape"):
        summary_from_total(np.zeros(3), plan, 3)
