"""The membership metrics of `securefed audit models`: AUC and TPR at low FPR with bootstrap
intervals, on scores whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.audit.models import membership_metrics


def _by(rows):  # noqa: ANN001, ANN202
    return {r["metric"]: r for r in rows}


@pytest.mark.slow  # bootstrap intervals of every metric (10 s on the 2-core VM)
def test_a_perfect_score_is_found_and_a_random_one_is_chance() -> None:
    y = np.array([1] * 200 + [0] * 200)
    rng = np.random.default_rng(0)
    perfect = _by(membership_metrics(y, 10.0 * y + rng.normal(size=400)))
    assert perfect["auc"]["value"] == 1.0
    assert perfect["tpr@0.01fpr"]["value"] == 1.0
    noise = _by(membership_metrics(y, rng.normal(size=400)))
    lo, hi = noise["auc"]["ci"]
    assert lo < 0.5 < hi
    assert noise["auc"]["chance"] == 0.5
    assert noise["tpr@0.001fpr"]["chance"] == 0.001
