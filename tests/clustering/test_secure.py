"""Secure-aggregate clustering: only masked aggregates reach the server, ledgers are charged,
too few sites are refused, and the clusters are recovered at a generous budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from securefed.clustering.secure import cluster_stats, histogram_counts, plan_secure_clustering
from securefed.crypto.masking import encode_fixed_point
from securefed.errors import BudgetExceededError, TooFewParticipantsError
from securefed.privacy.ledger import Ledger
from securefed.privacy.noise import SHARE_GRID, NoiseSource, SecureNoise, UnsafeSeededNoise
from securefed.protocol import parse_protocol
from securefed.protocol.loader import LoadedProtocol, protocol_hash
from securefed.study.secure_clustering import run_secure_clustering


def _loaded(
    algorithm: str,
    eps: float,
    k: int = 3,
    min_sites: int = 2,
    total: float = 8.0,
    colluding: int = 0,
):
    p = parse_protocol({
        "schema_version": 1,
        "study": {"name": "t", "mode": "simulation"},
        "privacy": {"total_epsilon": total, "total_delta": 1e-5},
        "release": {"mode": "secure-aggregate",
                    "bounds": {"file": "b.json", "sha256": "sha256:" + "0" * 64}},
        "clustering": {"k": k, "secure": {"algorithm": algorithm, "epsilon": eps, "delta": 1e-6,
                                          "iterations": 2, "bins_per_dimension": 6,
                                          "min_sites_per_aggregate": min_sites,
                                          "max_colluding_sites": colluding}},
    })  # fmt: skip
    return LoadedProtocol(p, protocol_hash(p), None, "")


def _sites(rng: np.random.Generator, sizes: list[int]) -> tuple[dict, dict]:
    centres = np.array([[0.2, 0.2, 0.3], [0.8, 0.3, 0.7], [0.4, 0.8, 0.5]])
    pts, labels = {}, {}
    for i, n in enumerate(sizes):
        lab = rng.integers(0, 3, n)
        labels[f"site-{i}"] = lab
        pts[f"site-{i}"] = np.clip(centres[lab] + rng.normal(0, 0.03, (n, 3)), 0, 1)
    return pts, labels


def _run(loaded, pts, tmp_path: Path, noise: Callable[[str], NoiseSource] | None = None):
    ledgers = {s: Ledger.for_protocol(tmp_path / s, loaded, s) for s in pts}
    res = run_secure_clustering(
        pts, loaded.protocol, ledgers, noise or (lambda s: SecureNoise()),
        context=loaded.sha256.encode(),
    )  # fmt: skip
    return res, ledgers


@pytest.mark.parametrize("algorithm", ["dp-histogram", "dp-kmeans"])
def test_server_receives_only_masked_aggregates(algorithm: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pts, _ = _sites(rng, [300, 200, 1])  # site-2 holds a single case
    loaded = _loaded(algorithm, 1.0)
    res, ledgers = _run(loaded, pts, tmp_path)
    plan = res.plan
    assert len(res.transcript) == len(plan.rounds) * 3
    for msg in res.transcript:
        kind = plan.rounds[msg.round]
        assert msg.masked.dtype == np.uint64
        assert msg.masked.shape == (plan.length(kind),)  # an aggregate, never (d,) per case
        # Not the site's plain aggregate, and no plain case vector anywhere inside it.
        own = pts[msg.site_id]
        if kind == "histogram":
            plain = encode_fixed_point(histogram_counts(own, plan.bins))
        else:
            plain = encode_fixed_point(cluster_stats(own, np.full((plan.k, 3), 0.5)))
        assert np.mean(msg.masked == plain) < 0.01
        for case in own[:20]:
            enc = encode_fixed_point(case)
            assert not np.isin(enc, msg.masked).any()
    # The decoded sums are noised: histogram counts are not integers, and not >= 0 everywhere.
    for total in res.sums:
        assert not np.allclose(total, np.round(total))
        # ... and on the 2^-12 grid: discrete shares on grid aggregates, no float noise.
        assert np.array_equal(total / SHARE_GRID, np.round(total / SHARE_GRID))
    # Every round was charged to every site's ledger before the noise.
    for sid, ledger in ledgers.items():
        state = ledger.verify()
        assert len(state.charges) == len(plan.rounds), sid
        assert 0 < ledger.spent() <= 1.0 + 1e-6


def test_histogram_mode_recovers_clusters(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pts, labels = _sites(rng, [400, 300, 250, 50])
    # Seeded noise of the same scale (the masks cancel exactly, the rest is seeded): the ARI is
    # a fixed number, not a draw that could fall below 0.9 by chance.
    res, _ = _run(_loaded("dp-histogram", 2.0), pts, tmp_path,
                  lambda s: UnsafeSeededNoise(1, s, "secure-clustering"))  # fmt: skip
    y = np.concatenate([labels[s] for s in sorted(pts)])
    yhat = np.concatenate([res.labels[s] for s in sorted(pts)])
    assert adjusted_rand_score(y, yhat) > 0.9


def test_too_few_sites_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pts, _ = _sites(rng, [50, 60])
    with pytest.raises(TooFewParticipantsError, match="min_sites_per_aggregate"):
        _run(_loaded("dp-histogram", 1.0, min_sites=3), pts, tmp_path)


def test_budget_is_checked_before_noise(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pts, _ = _sites(rng, [50, 60])
    loaded = _loaded("dp-histogram", 1.0, total=1.0)
    _run(loaded, pts, tmp_path)
    with pytest.raises(BudgetExceededError):  # a second clustering run with the same ledgers
        ledgers = {s: Ledger.for_protocol(tmp_path / s, loaded, s) for s in pts}
        with ledgers["site-0"].charge(
            "clustering", "again", plan_secure_clustering(loaded.protocol, 3).event()
        ):
            pass


class _Recording(SecureNoise):
    """The OS CSPRNG, recording the standard deviation of every Gaussian share drawn."""

    def __init__(self) -> None:
        super().__init__()
        self.scales: list[float] = []

    def gaussian(self, scale: float, shape: tuple[int, ...]) -> np.ndarray:
        self.scales.append(float(scale))
        return super().gaussian(scale, shape)


@pytest.mark.parametrize("colluding", [0, 1, 2])
def test_noise_shares_survive_the_declared_collusion(tmp_path: Path, colluding: int) -> None:
    """Each of n sites draws sigma^2 / (n - t): the noise of the n - t honest sites alone is the
    calibrated sigma, and the claimed epsilon holds against the server with t colluding sites
    (privacy-claims issue, finding 5)."""
    from securefed.clustering.secure import collusion_epsilon

    rng = np.random.default_rng(1)
    pts, _ = _sites(rng, [40, 30, 20, 10])
    loaded = _loaded("dp-histogram", 1.0, min_sites=3, colluding=colluding)
    ledgers = {s: Ledger.for_protocol(tmp_path / s, loaded, s) for s in pts}
    sources = {s: _Recording() for s in pts}
    res = run_secure_clustering(
        pts, loaded.protocol, ledgers, sources.__getitem__, context=loaded.sha256.encode()
    )
    plan = res.plan
    n = len(pts)
    for source in sources.values():
        for r, scale in enumerate(source.scales):
            sigma = plan.sigma(plan.rounds[r])
            assert scale == pytest.approx(sigma / np.sqrt(n - colluding))
            # What the honest sites leave after t colluders subtract their shares: sigma^2.
            assert (n - colluding) * scale**2 == pytest.approx(sigma**2)
    claim = collusion_epsilon(plan, n, colluding)
    assert claim == pytest.approx(plan.epsilon, rel=0.02)
    assert collusion_epsilon(plan, n, colluding + 1) > plan.epsilon * 1.05
    assert collusion_epsilon(plan, n, n) == float("inf")


def test_collusion_setting_needs_an_honest_site_per_round(tmp_path: Path) -> None:
    from securefed.errors import ProtocolError

    with pytest.raises(ProtocolError, match="max_colluding_sites"):
        _loaded("dp-histogram", 1.0, min_sites=2, colluding=2)
    with pytest.raises(ProtocolError, match="greater than or equal to 2"):
        _loaded("dp-histogram", 1.0, min_sites=1)  # one site per secure aggregate
    rng = np.random.default_rng(2)
    pts, _ = _sites(rng, [30, 30])
    loaded = _loaded("dp-histogram", 1.0, min_sites=2, colluding=1)
    strict = _loaded("dp-histogram", 1.0, min_sites=3, colluding=2)
    res, _ = _run(loaded, pts, tmp_path / "ok")
    assert res.plan.colluding == 1
    with pytest.raises(TooFewParticipantsError):
        _run(strict, pts, tmp_path / "refused")
