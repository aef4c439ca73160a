"""Secure-aggregate clustering: site and server roles that exchange only masked aggregates.

Every case stays at its site as a point in [0, 1]^d (a projection fixed in advance, see
:mod:`securefed.clustering.fixed_projection`). The server asks for rounds; each site answers one
masked vector per round (pairwise masks, :mod:`securefed.crypto.masking`) that holds its local
aggregate plus its share of the noise; the server can decode only the noised SUM over all sites.
Points, aggregates and shares live on the grid ``SHARE_GRID * Z`` and each share is an exact
discrete Gaussian (OpenDP), so no floating-point sampling is involved (Mironov 2012); the sum of
the shares is within a negligible tau of one discrete Gaussian (Kairouz, Liu and Steinke 2021,
checked for every share), which is accounted as the Gaussian with the same multiplier.

Algorithms (``clustering.secure.algorithm``):
- ``dp-histogram``: round 0 releases a histogram of the points on a ``bins^d`` grid (count L2
  sensitivity 1 for add/remove-one, sqrt(2) for replace-one). Clustering the noisy histogram
  (weighted k-means on the centres of the cells above a noise threshold) is post-processing. The
  remaining ``iterations - 1`` rounds refine the centroids with noised per-cluster counts and sums.
- ``dp-kmeans``: a public seeded random start and ``iterations`` noised Lloyd rounds (the simple
  baseline; docs/clustering.md).

Stats rounds release, per cluster, the count and the sum of the centred points (x - 1/2): L2
sensitivity sqrt(1 + d/4) for add/remove-one, max(sqrt(d), sqrt(2 + d/2)) for replace-one.
All rounds use one noise multiplier (sigma / sensitivity) calibrated with the protocol's accountant
so that their composition fits ``clustering.secure`` (epsilon, delta). Each site derives the plan
from the protocol itself; the server cannot ask for less noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from securefed.crypto.masking import MaskingParty, unmask_sum
from securefed.errors import AggregationError, ClusteringError, TooFewParticipantsError
from securefed.privacy.noise import SHARE_GRID, distributed_discrete_gaussian_share
from securefed.protocol import Protocol as StudyProtocol

__all__ = [
    "MaskedAggregate",
    "RoundRequest",
    "SecureClusteringServer",
    "SecureClusteringSite",
    "SecurePlan",
    "collusion_epsilon",
    "collusion_lines",
    "plan_secure_clustering",
]

STAGE = "clustering"


class ChargingLedger(Protocol):
    """What the site needs from its privacy ledger: ``charge`` checks the budget before noise."""

    def charge(self, stage: str, release_id: str, event: Any) -> Any: ...


@dataclass(frozen=True)
class SecurePlan:
    """Everything fixed in advance by the protocol: dimension, rounds, sensitivities, noise."""

    algorithm: Literal["dp-histogram", "dp-kmeans"]
    dimension: int
    k: int
    bins: int
    rounds: tuple[str, ...]  # "histogram" | "stats"
    noise_multiplier: float
    epsilon: float
    delta: float
    neighbouring: str
    min_sites: int
    seed: int
    colluding: int = 0  # sites that may collude with the server (each share sized for n - t)
    cases_per_patient: int = 1  # contribution bound (privacy.max_cases_per_patient)

    def sensitivity(self, kind: str) -> float:
        """L2 sensitivity of one round's aggregate to one patient: the one-case bound times the
        number of cases a patient may contribute (triangle inequality)."""
        d = self.dimension
        if kind == "histogram":
            one = math.sqrt(2.0) if self.neighbouring == "replace-one" else 1.0
        elif self.neighbouring == "replace-one":
            one = max(math.sqrt(d), math.sqrt(2.0 + d / 2.0))
        else:
            one = math.sqrt(1.0 + d / 4.0)
        return self.cases_per_patient * one

    def sigma(self, kind: str) -> float:
        return self.noise_multiplier * self.sensitivity(kind)

    def length(self, kind: str) -> int:
        return self.bins**self.dimension if kind == "histogram" else self.k * (1 + self.dimension)

    def event(self) -> Any:
        """The DpEvent of one round (noise multiplier normalised by the sensitivity)."""
        import dp_accounting

        return dp_accounting.GaussianDpEvent(self.noise_multiplier)


def plan_secure_clustering(protocol: StudyProtocol, dimension: int) -> SecurePlan:
    """Derive the plan from a schema ``Protocol`` (clustering.secure, clustering.k, privacy)."""
    import dp_accounting

    from securefed.privacy.accounting import make_accountant
    from securefed.privacy.calibration import calibrate_noise_multiplier

    sec = protocol.clustering.secure
    if sec.algorithm == "dp-histogram":
        cells = sec.bins_per_dimension**dimension
        if cells > 2_000_000:
            raise ClusteringError(
                f"clustering.secure.bins_per_dimension: {sec.bins_per_dimension}^{dimension} = "
                f"{cells} histogram cells is too many; lower the bins or the projection dimension"
            )
        rounds = ("histogram",) + ("stats",) * (sec.iterations - 1)
    else:
        rounds = ("stats",) * sec.iterations
    m = len(rounds)
    if sec.delta <= 0:
        raise ClusteringError("clustering.secure.delta must be > 0 for the Gaussian mechanism")
    z = calibrate_noise_multiplier(
        sec.epsilon,
        sec.delta,
        lambda s: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(s), m),
        lambda: make_accountant(protocol.privacy.accountant),
    )
    return SecurePlan(
        algorithm=sec.algorithm,
        dimension=dimension,
        k=protocol.clustering.k,
        bins=sec.bins_per_dimension,
        rounds=rounds,
        noise_multiplier=z,
        epsilon=sec.epsilon,
        delta=sec.delta,
        neighbouring=protocol.privacy.neighbouring,
        min_sites=sec.min_sites_per_aggregate,
        seed=protocol.clustering.seed,
        colluding=sec.max_colluding_sites,
        cases_per_patient=protocol.privacy.max_cases_per_patient,
    )


@dataclass(frozen=True)
class RoundRequest:
    """Server -> sites: which round, the public centroids (stats rounds) and the participants."""

    round: int
    kind: str
    participants: tuple[str, ...]
    centroids: np.ndarray | None = None


@dataclass(frozen=True)
class MaskedAggregate:
    """Site -> server: one masked uint64 vector (uniform modulo 2^64 without the pair seeds)."""

    site_id: str
    round: int
    masked: np.ndarray


def histogram_counts(points: np.ndarray, bins: int) -> np.ndarray:
    """Counts of ``points`` in [0, 1]^d on a regular ``bins^d`` grid (row-major cell index)."""
    n, d = points.shape
    cells = np.minimum((points * bins).astype(np.int64), bins - 1)
    flat = np.ravel_multi_index(cells.T, (bins,) * d) if n else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=bins**d).astype(np.float64)


def cluster_stats(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Per cluster (nearest centroid): count, then the sum of (x - 1/2); flattened (k * (1 + d))."""
    k, d = centroids.shape
    out = np.zeros((k, 1 + d))
    if len(points):
        lab = nearest(points, centroids)
        np.add.at(out[:, 0], lab, 1.0)
        np.add.at(out[:, 1:], lab, points - 0.5)
    return out.ravel()


def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each point."""
    return np.argmin(((points[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)


class SecureClusteringSite:
    """The site role. Holds its projected points (never sent), its masking key and its ledger.

    What leaves the site: its X25519 public key, then per round one masked vector of its local
    aggregate (histogram counts or per-cluster counts and sums) plus its noise share."""

    def __init__(
        self,
        site_id: str,
        points: np.ndarray,
        plan: SecurePlan,
        ledger: ChargingLedger,
        noise: Any,
        *,
        context: bytes,
        party: MaskingParty | None = None,
    ) -> None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != plan.dimension:
            raise ClusteringError(f"site {site_id}: points must be (n, {plan.dimension})")
        if pts.size and (pts.min() < 0 or pts.max() > 1):
            raise ClusteringError(f"site {site_id}: projected points must lie in [0, 1]")
        self.site_id = site_id
        # On the share grid (inside [0, 1]^d, so the sensitivities hold): the local aggregates are
        # then grid values and the discrete noise shares keep them on the grid.
        self._points = np.rint(pts / SHARE_GRID) * SHARE_GRID
        self._plan = plan
        self._ledger = ledger
        self._noise = noise
        self._context = context
        self._party = party if party is not None else MaskingParty.generate(site_id)
        self._keys: dict[str, bytes] = {}
        self._answered: set[int] = set()

    def __repr__(self) -> str:
        return f"SecureClusteringSite({self.site_id!r}, {len(self._points)} cases)"

    @property
    def public_key(self) -> bytes:
        return self._party.public_key

    def receive_keys(self, keys: dict[str, bytes]) -> None:
        """Public keys of the round's participants (from the key directory / protocol)."""
        self._keys = dict(keys)

    def respond(self, request: RoundRequest) -> MaskedAggregate:
        """Answer one round. Refuses too few participants, a repeated round and a kind that the
        plan does not have at that position; charges the ledger before drawing noise."""
        plan = self._plan
        parts = request.participants
        if len(parts) < plan.min_sites:
            raise TooFewParticipantsError(
                f"site {self.site_id}: round {request.round} has {len(parts)} participant(s), "
                f"the protocol requires clustering.secure.min_sites_per_aggregate = "
                f"{plan.min_sites}; refusing to contribute"
            )
        if len(parts) <= plan.colluding:
            raise TooFewParticipantsError(
                f"site {self.site_id}: round {request.round} has {len(parts)} participant(s); with "
                f"clustering.secure.max_colluding_sites = {plan.colluding} no honest site's noise "
                "would be certain to remain; refusing to contribute"
            )
        if self.site_id not in parts or set(parts) - set(self._keys):
            raise AggregationError(f"site {self.site_id}: unknown participant list {parts}")
        if request.round in self._answered:
            raise AggregationError(f"site {self.site_id}: round {request.round} already answered")
        if not 0 <= request.round < len(plan.rounds) or plan.rounds[request.round] != request.kind:
            raise AggregationError(
                f"site {self.site_id}: round {request.round} ({request.kind}) is not in the plan"
            )
        if request.kind == "histogram":
            local = histogram_counts(self._points, plan.bins)
        else:
            c = request.centroids
            if c is None or c.shape != (plan.k, plan.dimension):
                raise AggregationError(f"site {self.site_id}: stats round needs (k, d) centroids")
            local = cluster_stats(self._points, np.clip(c, 0.0, 1.0))
        release_id = f"secure-clustering/round-{request.round}"
        with self._ledger.charge(STAGE, release_id, plan.event()):
            share = distributed_discrete_gaussian_share(
                self._noise, plan.sigma(request.kind), len(parts), local.shape,
                min_contributors=len(parts) - plan.colluding,
            )  # fmt: skip
            masked = self._party.mask(
                local + share,
                {p: self._keys[p] for p in parts},
                context=self._context,
                round_label=f"round-{request.round}".encode(),
            )
        self._answered.add(request.round)
        return MaskedAggregate(self.site_id, request.round, masked)

    def assign(self, centroids: np.ndarray) -> np.ndarray:
        """Local assignment of this site's cases to the final centroids (nothing is sent)."""
        return nearest(self._points, centroids)


@dataclass
class SecureClusteringServer:
    """The server role: schedules rounds, unmasks sums, post-processes. Sees only masked
    vectors and noised sums (``sums_`` keeps every decoded sum for the report)."""

    plan: SecurePlan
    participants: tuple[str, ...]
    centroids_: np.ndarray | None = None
    sums_: list[np.ndarray] = field(default_factory=list)
    received_: list[MaskedAggregate] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.participants) < self.plan.min_sites:
            raise TooFewParticipantsError(
                f"secure clustering: {len(self.participants)} site(s) take part but "
                f"clustering.secure.min_sites_per_aggregate = {self.plan.min_sites}; add sites or "
                "lower the minimum in the protocol"
            )
        if self.plan.algorithm == "dp-kmeans":
            rng = np.random.default_rng(self.plan.seed)
            self.centroids_ = rng.uniform(0.25, 0.75, size=(self.plan.k, self.plan.dimension))

    def request(self, round_index: int) -> RoundRequest:
        kind = self.plan.rounds[round_index]
        cents = None if kind == "histogram" else np.array(self.centroids_)
        return RoundRequest(round_index, kind, self.participants, cents)

    def receive(self, round_index: int, messages: list[MaskedAggregate]) -> np.ndarray:
        """Unmask the round's sum (every participant must have answered) and update centroids."""
        self.received_.extend(messages)
        by_site = {m.site_id: m.masked for m in messages if m.round == round_index}
        total = unmask_sum(by_site, self.participants)
        self.sums_.append(total)
        if self.plan.rounds[round_index] == "histogram":
            self.centroids_ = self._cluster_histogram(total)
        else:
            self.centroids_ = self._update(total)
        return total

    def _cluster_histogram(self, noisy: np.ndarray) -> np.ndarray:
        from sklearn.cluster import KMeans

        plan = self.plan
        sigma = plan.sigma("histogram")
        cells = noisy.size
        # Threshold at about the largest noise value among empty cells (post-processing).
        tau = sigma * math.sqrt(2.0 * math.log(max(cells, 2)))
        keep = np.flatnonzero(noisy > tau)
        if keep.size < plan.k:
            keep = np.argsort(noisy)[-max(plan.k, 1) :]
        idx = np.array(np.unravel_index(keep, (plan.bins,) * plan.dimension)).T
        centres = (idx + 0.5) / plan.bins
        weights = np.maximum(noisy[keep], 1e-9)
        km = KMeans(n_clusters=plan.k, n_init=10, random_state=plan.seed)
        km.fit(centres, sample_weight=weights)
        return km.cluster_centers_

    def _update(self, total: np.ndarray) -> np.ndarray:
        plan = self.plan
        stats = total.reshape(plan.k, 1 + plan.dimension)
        counts, sums = stats[:, 0], stats[:, 1:]
        old = np.array(self.centroids_)
        # Keep a centroid whose noisy count is too small to carry information.
        floor = 3.0 * plan.sigma("stats")
        ok = counts > floor
        new = old.copy()
        new[ok] = np.clip(sums[ok] / counts[ok, None] + 0.5, 0.0, 1.0)
        return new


def collusion_epsilon(
    plan: SecurePlan, participants: int, colluders: int, accountant: str = "rdp"
) -> float:
    """Epsilon of the whole secure clustering against the server joined by ``colluders`` sites
    (who subtract their own noise shares) in rounds of ``participants`` sites: the remaining
    noise has variance sigma^2 (n - c) / (n - t). At most the claim for c <= t; inf when c >= n."""
    import dp_accounting

    from securefed.privacy.accounting import accountant_epsilon

    n, t, c = int(participants), plan.colluding, int(colluders)
    if c >= n:
        return math.inf
    z = plan.noise_multiplier * math.sqrt((n - c) / (n - t))
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), len(plan.rounds))
    return float(accountant_epsilon([event], plan.delta, accountant))


def collusion_lines(protocol: StudyProtocol) -> list[str]:
    """What `securefed protocol check|render` says of the distributed noise: the epsilon against
    the server with up to ``max_colluding_sites`` colluding sites (the claim) and with one more,
    in the smallest aggregate the protocol allows."""
    plan = plan_secure_clustering(protocol, dimension=1)  # epsilon does not depend on d
    n, t = plan.min_sites, plan.colluding
    worse = collusion_epsilon(plan, n, t + 1, protocol.privacy.accountant)
    return [
        f"           distributed noise: each of n sites adds sigma^2/(n - {t}), so the claimed "
        f"epsilon={plan.epsilon:g} holds against the server with up to {t} colluding site(s); "
        f"with {t + 1} colluding in an aggregate of {n} sites: epsilon "
        + ("inf" if math.isinf(worse) else f"{worse:.3g}")
    ]
