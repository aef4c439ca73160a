"""Client-level DP's sensitivity under both patient-level relations (issue "every accepted
epsilon", bug 2): adding or removing one patient can flip a site's clipped update from +C to -C,
so the sum moves by up to twice the rounded bound. ``ddg.py`` used factor 1 under add-remove-one:
demo-clientdp's claim of 8 was then 18.44 under that relation."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from securefed.privacy.ddg import encode_update, rotation_seed
from securefed.protocol import parse_protocol
from securefed.training.client_dp import site_plan

DEMO = Path(__file__).resolve().parents[2] / "protocols" / "demo-clientdp.toml"
DIM = 4096


class _NoNoise:
    """A noise source of zeros: isolates what the data changes in the encoded vector."""

    name = "zero"

    def discrete_gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, np.int64)


def _plan(relation: str):
    data = tomllib.loads(DEMO.read_text())
    data["privacy"]["neighbouring"] = relation
    data["release"] = {"mode": "plain"}  # a local-DP release is offered under replace-one only
    data["clustering"]["scaling"] = "percentile"
    data["privacy"]["total_epsilon"] = 8.0
    return site_plan(parse_protocol(data), DIM)


@pytest.mark.parametrize("relation", ["replace-one", "add-remove-one"])
def test_one_patient_can_move_the_encoded_update_by_twice_the_bound(relation: str) -> None:
    plan = _plan(relation)
    # A site of one patient whose gradient direction is u: its clipped update is +C u. The
    # neighbour that adds one patient of opposite pull (or removes this one and adds another)
    # gives -C u: both clipped to the same norm C.
    rng = np.random.default_rng(0)
    u = rng.normal(size=DIM)
    u /= np.linalg.norm(u)
    seed = rotation_seed("sha256:x", "global", 1)
    m = plan.modulus

    def encoded(update: np.ndarray) -> np.ndarray:
        raw = encode_update(update, plan, seed, _NoNoise(), rng=np.random.default_rng(1))
        return np.mod(raw + m // 2, m).astype(np.int64)  # back to the integer vector x mod m

    plus, minus = encoded(10 * plan.clip * u), encoded(-10 * plan.clip * u)
    diff = np.mod(plus - minus + m // 2, m) - m // 2  # the centred difference of the two sums
    moved = float(np.linalg.norm(diff))
    assert moved > 1.5 * plan.l2_bound  # factor 1 would understate it
    assert moved <= plan.sensitivity + 1e-9
    assert plan.sensitivity == pytest.approx(2 * plan.l2_bound)


def test_both_relations_charge_the_same_plan() -> None:
    """The noise and the charged round event are the same under both relations (factor 2)."""
    a, b = _plan("replace-one"), _plan("add-remove-one")
    assert a.round_event() == b.round_event()
    assert a.sigma_units == b.sigma_units
    assert a.sensitivity == b.sensitivity
    assert math.isclose(a.planned_epsilon(), 8.0, rel_tol=1e-3) or a.planned_epsilon() <= 8.0
