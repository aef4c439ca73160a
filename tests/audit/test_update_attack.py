"""The attack on one site's update: gradient alignment separates a site's members in its own
update, much less in the SecAgg+ aggregate, and finds nothing in an update its members did not
shape (securefed.audit.update_attack)."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.audit.update_attack import alignment_attacks

DIM, SITES, PER_SITE, TEST = 4000, 4, 5, 10


def _federation(signal: bool, seed: int = 0):
    """Per-case gradients; each site's update is minus the sum of its members' gradients plus
    SGD-like noise (variance 1000 per coordinate, about 14 cases' worth)."""
    rng = np.random.default_rng(seed)
    n = SITES * PER_SITE + TEST
    grads = {i: rng.normal(size=DIM) for i in range(n)}
    members = {s: list(range(s * PER_SITE, (s + 1) * PER_SITE)) for s in range(SITES)}
    deltas = {}
    for s, idx in members.items():
        drift = -sum(grads[i] for i in idx) if signal else -rng.normal(size=DIM) * np.sqrt(PER_SITE)
        deltas[s] = drift + rng.normal(scale=np.sqrt(1000.0), size=DIM)
    return grads, deltas, members, list(range(SITES * PER_SITE, n))


def _value(results, attack: str, target: str, metric: str) -> dict:
    (hit,) = [
        r for r in results if (r["attack"], r["target"], r["metric"]) == (attack, target, metric)
    ]
    return hit


@pytest.mark.slow  # 15 s on the 2-core VM
def test_one_sites_update_gives_its_members_away_and_the_aggregate_much_less() -> None:
    results = alignment_attacks(*_federation(signal=True), start="initial")
    plain = _value(results, "update-membership", "plain-update", "auc")
    secagg = _value(results, "update-membership", "secagg-aggregate", "auc")
    assert plain["value"] > 0.85 and plain["ci"][0] > 0.5, plain
    assert secagg["value"] < plain["value"] - 0.08, (plain, secagg)
    assert plain["n"] == secagg["n"] == SITES * (PER_SITE + TEST)
    attribution = _value(results, "site-attribution", "plain-update", "accuracy")
    assert attribution["chance"] == 1 / SITES
    assert attribution["ci"][0] > attribution["chance"], attribution
    assert attribution["ci"][0] <= attribution["value"] <= attribution["ci"][1]


def test_an_update_its_members_did_not_shape_shows_nothing() -> None:
    results = alignment_attacks(*_federation(signal=False), start="initial")
    for target in ("plain-update", "secagg-aggregate"):
        auc = _value(results, "update-membership", target, "auc")
        assert auc["ci"][0] < 0.5 < auc["ci"][1], auc
    attribution = _value(results, "site-attribution", "plain-update", "accuracy")
    assert attribution["ci"][0] < attribution["chance"] < attribution["ci"][1], attribution
