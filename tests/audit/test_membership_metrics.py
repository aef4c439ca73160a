"""The membership metrics of `securefed audit models`: AUC and TPR at low FPR with bootstrap
intervals, on scores whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from securefed.audit.membership import FPRS, _metrics
from securefed.audit.models import membership_metrics
from securefed.errors import InternalError


def _by(rows):  # noqa: ANN001, ANN202
    return {r["metric"]: r for r in rows}


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


def _sklearn(members: np.ndarray, others: np.ndarray) -> list[float]:
    y = np.concatenate([np.ones(len(members)), np.zeros(len(others))])
    score = np.concatenate([members, others])
    f, t, _ = roc_curve(y, score, drop_intermediate=False)  # every threshold's point
    return [roc_auc_score(y, score), *(float(t[f <= fpr].max()) for fpr in FPRS)]


# few distinct values, so that ties between and within the classes are common
_scores = st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(_scores, _scores, st.integers(1, 1500))
def test_the_vectorized_metrics_are_sklearns(
    members: list[float], others: list[float], pad: int
) -> None:
    """The bootstrap's vectorized AUC and TPR at each FPR equal sklearn's roc_auc_score and
    the best of roc_curve's points at or under the FPR, ties included, also with enough
    non-members (``pad`` more) that a threshold may pass some of them at 0.1 %. Every threshold's
    point: with ``drop_intermediate`` sklearn drops a tie's corner that lies on a straight
    segment (members [0, 1] against non-members [0, 1, 2] and 197 lower ones: TPR 0.5 at FPR
    0.01 is a threshold's point, the dropped one)."""
    m, o = np.array(members), np.array(others)
    for others_ in (o, np.concatenate([o, np.full(pad, -5.0)])):
        assert _metrics(m, others_) == pytest.approx(_sklearn(m, others_), abs=1e-12)
    batch = np.stack([m, m[::-1]]), np.stack([o, o[::-1]])  # resamples along the last axis
    assert _metrics(*batch).T.ravel() == pytest.approx(
        [*_sklearn(m, o), *_sklearn(m[::-1], o[::-1])], abs=1e-12
    )


def test_a_non_finite_score_is_refused_by_name() -> None:
    y = np.array([1, 1, 0, 0])
    with pytest.raises(InternalError, match="1 of 4 are not finite"):
        membership_metrics(y, np.array([0.1, np.nan, 0.3, 0.4]))


@pytest.mark.parametrize("y", [[1, 0, 0, 0], [1, 1, 1, 0]], ids=["one-member", "one-non-member"])
def test_a_class_of_one_case_gets_values_and_intervals(y: list[int]) -> None:
    """A class of one case is held fixed while the other is resampled: same values as sklearn,
    well-formed intervals."""
    labels, score = np.array(y), np.array([0.9, 0.1, 0.2, 0.3])
    rows = _by(membership_metrics(labels, score))
    expected = _sklearn(score[labels == 1], score[labels == 0])
    assert [rows[k]["value"] for k in ("auc", "tpr@0.01fpr", "tpr@0.001fpr")] == pytest.approx(
        expected
    )
    assert all(r["ci"][0] <= r["value"] <= r["ci"][1] for r in rows.values())
