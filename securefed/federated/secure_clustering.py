"""Simulation driver of the secure-aggregate clustering: composes the site and server roles.

Message flow (the only traffic): each site publishes its X25519 public key; per round the server
sends a :class:`RoundRequest` (public centroids) and each site answers a :class:`MaskedAggregate`.
Every message the server receives is kept in ``transcript`` so that tests and auditors can check
that none of them is a case's vector. Sites use their train and val cases for the aggregates and
assign all their cases (train, val, test) to the final centroids locally.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefed.clustering.secure import (
    MaskedAggregate,
    SecureClusteringServer,
    SecureClusteringSite,
    SecurePlan,
    plan_secure_clustering,
)
from securefed.errors import BudgetExceededError

__all__ = [
    "SecureClusteringResult",
    "SimulationLedger",
    "run_secure_clustering",
]


@dataclass
class SimulationLedger:
    """In-memory stand-in for a site's ledger in simulations: composes the charged DpEvents with
    the protocol's accountant and refuses, before any noise, a release past the budget."""

    site_id: str
    total_epsilon: float
    total_delta: float
    accountant: str = "rdp"
    entries: list[dict[str, Any]] = field(default_factory=list)

    def spent(self, extra: Any = None) -> float:
        from securefed.privacy.accounting import accountant_epsilon

        events = [e["event"] for e in self.entries] + ([extra] if extra is not None else [])
        return accountant_epsilon(events, self.total_delta, self.accountant) if events else 0.0

    @contextlib.contextmanager
    def charge(self, stage: str, release_id: str, event: Any) -> Iterator[None]:
        if any(e["release_id"] == release_id for e in self.entries):
            yield
            return
        after = self.spent(event)
        if after > self.total_epsilon + 1e-9:
            raise BudgetExceededError(
                f"site {self.site_id}: {stage}/{release_id} would bring the spend to "
                f"epsilon {after:.3f} > budget {self.total_epsilon}; refused before noise"
            )
        self.entries.append({"stage": stage, "release_id": release_id, "event": event})
        yield


@dataclass
class SecureClusteringResult:
    plan: SecurePlan
    centroids: np.ndarray  # (k, d) in the projected unit box
    labels: dict[str, np.ndarray]  # site id -> cluster of each of its cases (site-local)
    transcript: list[MaskedAggregate]  # every message the server received
    sums: list[np.ndarray]  # every decoded (noised) sum
    seconds: float


def run_secure_clustering(
    fit_points: Mapping[str, np.ndarray],
    protocol: Any,
    ledgers: Mapping[str, Any],
    noise_for: Callable[[str], Any],
    *,
    context: bytes,
    assign_points: Mapping[str, np.ndarray] | None = None,
) -> SecureClusteringResult:
    """Run every round of the protocol's secure clustering among the sites of ``fit_points``
    (site id -> projected train+val points in [0, 1]^d) and assign ``assign_points`` (default:
    the same points) locally at each site."""
    start = time.perf_counter()
    dims = {p.shape[1] for p in fit_points.values()}
    if len(dims) != 1:
        raise ValueError("all sites must use the same projection dimension")
    plan = plan_secure_clustering(protocol, dims.pop())
    ids = tuple(sorted(fit_points))
    server = SecureClusteringServer(plan, ids)
    sites = {
        sid: SecureClusteringSite(
            sid, fit_points[sid], plan, ledgers[sid], noise_for(sid), context=context
        )
        for sid in ids
    }
    directory = {sid: site.public_key for sid, site in sites.items()}
    for site in sites.values():
        site.receive_keys(directory)
    for r in range(len(plan.rounds)):
        request = server.request(r)
        server.receive(r, [sites[sid].respond(request) for sid in ids])
    centroids = np.array(server.centroids_)
    points = assign_points if assign_points is not None else fit_points
    labels = {}
    for sid in ids:
        local = SecureClusteringSite(sid, points[sid], plan, ledgers[sid], None, context=context)
        labels[sid] = local.assign(centroids)
    return SecureClusteringResult(
        plan,
        centroids,
        labels,
        list(server.received_),
        list(server.sums_),
        time.perf_counter() - start,
    )
