"""Non-federated baselines on tiny synthetic cases (few steps: contracts, not accuracy)."""

from __future__ import annotations

import pytest
from support.training import EVAL, SPEC, volumes

from securefed.errors import TrainingError
from securefed.training.baselines import (
    SiteData,
    centralized_baseline,
    cffl_ideal_baseline,
    local_baseline,
    local_finetune_baseline,
)
from securefed.training.local import prepare_volumes

EVAL_FAST = EVAL.model_copy(update={"hd95": False})


@pytest.fixture(scope="module")
def sites() -> dict[str, SiteData]:
    data = prepare_volumes(volumes(6), SPEC)
    return {
        "site-1": SiteData(train=data[0:2], val=data[2:3], test=data[2:3]),
        "site-2": SiteData(train=data[3:5], val=data[5:6], test=data[5:6]),
    }


def test_local_and_finetune(sites: dict[str, SiteData]) -> None:
    local = local_baseline(sites, SPEC, EVAL_FAST, max_steps=1, device="cpu")
    assert set(local.weights) == {"site-1", "site-2"}
    assert not local.non_private
    assert [c["site"] for c in local.cases] == ["site-1", "site-2"]
    assert all(c["method"] == "local" for c in local.cases)
    tuned = local_finetune_baseline(
        local.weights["site-1"], sites, SPEC, EVAL_FAST, max_steps=1, eval_every=1, device="cpu"
    )
    steps = [h["step"] for h in tuned.history if h["group"] == "site-2"]
    assert steps == [0, 1]  # round 0 (the global model) is a candidate
    assert "dice_wt" in tuned.means()


def test_centralized_and_cffl_ideal_are_marked_non_private(sites: dict[str, SiteData]) -> None:
    central = centralized_baseline(sites, SPEC, EVAL_FAST, steps=1, device="cpu")
    assert central.non_private
    assert set(central.weights) == {"all"}
    assert len(central.cases) == 2
    ids = [c["subject_id"] for s in sites.values() for c in (*s.train, *s.val)]
    cluster_of = {sid: i % 2 for i, sid in enumerate(ids)}
    ideal = cffl_ideal_baseline(
        sites, cluster_of, SPEC, EVAL_FAST, steps=1, init_weights=central.weights["all"]
    )
    assert ideal.non_private
    assert set(ideal.weights) == {"0", "1"}
    assert {c["cluster"] for c in ideal.cases} <= {0, 1}
    assert len(ideal.cases) == 2
    with pytest.raises(TrainingError, match="no cluster"):
        cffl_ideal_baseline(sites, {}, SPEC, EVAL_FAST, steps=1)
