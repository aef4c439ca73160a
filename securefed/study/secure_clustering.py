"""Simulation driver of the secure-aggregate clustering: composes the site and server roles.

Message flow (the only traffic): each site publishes its X25519 public key; per round the server
sends a :class:`RoundRequest` (public centroids) and each site answers a :class:`MaskedAggregate`.
Every message the server receives is kept in ``transcript`` so that tests and auditors can check
that none of them is a case's vector. Sites use their train and val cases for the aggregates and
assign all their cases (train, val, test) to the final centroids locally.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefed.clustering.fixed_projection import projection_for
from securefed.clustering.secure import (
    MaskedAggregate,
    SecureClusteringServer,
    SecureClusteringSite,
    SecurePlan,
    nearest,
    plan_secure_clustering,
)
from securefed.fileio import atomic_write_bytes, write_json_atomic
from securefed.privacy.bounding import bounded_mask
from securefed.privacy.ledger import Ledger
from securefed.privacy.noise import noise_source_for
from securefed.protocol import LoadedProtocol, Protocol
from securefed.radiomics.table import FeatureTable
from securefed.trust.egress_log import EgressLog, describe_value

__all__ = [
    "SecureClusteringResult",
    "cluster_table_secure",
    "run_secure_clustering",
    "secure_summary",
    "write_centroids",
]

CENTROIDS_FORMAT = "securefed-secure-centroids-v1"


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
    protocol: Protocol,
    ledgers: Mapping[str, Ledger],
    noise_for: Callable[[str], Any],
    *,
    context: bytes,
    assign_points: Mapping[str, np.ndarray] | None = None,
    on_sent: Callable[[str, str, list[dict[str, Any]]], None] | None = None,
) -> SecureClusteringResult:
    """Run every round of the protocol's secure clustering among the sites of ``fit_points``
    (site id -> projected train+val points in [0, 1]^d) and assign ``assign_points`` (default:
    the same points) locally at each site. ``on_sent(site, stage, fields)`` records what each
    site sent (its egress log)."""
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
    for sid, site in sites.items():
        site.receive_keys(directory)
        if on_sent is not None:
            on_sent(sid, "clustering/keys", [describe_value("public_key", site.public_key)])
    for r in range(len(plan.rounds)):
        request = server.request(r)
        answers = [sites[sid].respond(request) for sid in ids]
        if on_sent is not None:
            for answer in answers:
                on_sent(answer.site_id, f"clustering/round-{r}",
                        [describe_value("masked", answer.masked)])  # fmt: skip
        server.receive(r, answers)
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


def cluster_table_secure(
    table: FeatureTable,
    loaded: LoadedProtocol,
    ledger_root: str | Path,
    *,
    held_out: Collection[int] = (),
    unsafe_seed: int | None = None,
    patients: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, SecureClusteringResult]:
    """Simulate the secure-aggregate clustering on a feature table whose rows stay with their
    site (the protocol's sites, ``site-<partition_id>`` when it lists none).

    Each site projects its own cases with the protocol's fixed projection, contributes its
    train+val cases to the masked, noised aggregates (charged to its ledger under
    ``ledger_root/<site id>``) and assigns all its cases locally. Partitions in ``held_out``
    (unseen institutions) take no part and assign their cases to the final public centroids.
    Returns the cluster of every row of ``table`` (collected only for the simulation's report)
    and the run's result. Used by ``securefed cluster`` and by the study alike. ``patients``
    (subject id -> patient id): at most ``privacy.max_cases_per_patient`` cases of a patient
    enter the aggregates (the plan's sensitivities are scaled by that bound)."""
    protocol = loaded.protocol
    projection = projection_for(loaded, table.columns)
    cols = [table.columns.index(c) for c in projection.columns]
    parts = table.partition_array
    sites = protocol.resolve_sites(sorted({int(p) for p in parts}))
    bound = protocol.privacy.max_cases_per_patient
    fit = table.fit_mask & bounded_mask(table.subject_ids, patients, bound)
    fit_points: dict[str, np.ndarray] = {}
    all_points: dict[str, np.ndarray] = {}
    rows: dict[str, np.ndarray] = {}
    held: dict[str, np.ndarray] = {}
    for site in sites:
        mine = parts == site.partition_id
        pts = projection(np.asarray(table.values)[mine][:, cols])
        if site.partition_id in set(held_out):
            held[site.id] = np.flatnonzero(mine)
            all_points[site.id] = pts
            continue
        rows[site.id] = np.flatnonzero(mine)
        all_points[site.id] = pts
        fit_points[site.id] = pts[fit[mine]]
    ledgers = {sid: Ledger.for_protocol(Path(ledger_root) / sid, loaded, sid) for sid in fit_points}

    def sent(sid: str, stage: str, fields: list[dict[str, Any]]) -> None:
        EgressLog(Path(ledger_root) / sid, sid, loaded.sha256).record(
            "masked-aggregate", stage, "server", fields
        )

    result = run_secure_clustering(
        fit_points,
        protocol,
        ledgers,
        lambda sid: noise_source_for(protocol, sid, "secure-clustering", unsafe_seed=unsafe_seed),
        context=loaded.sha256.encode() + b"|clustering",
        assign_points={sid: all_points[sid] for sid in fit_points},
        on_sent=sent,
    )
    labels = np.zeros(len(table.subject_ids), dtype=np.int64)
    for sid, idx in rows.items():
        labels[idx] = result.labels[sid]
    for sid, idx in held.items():  # unseen institutions: local assignment, nothing sent
        labels[idx] = nearest(all_points[sid], result.centroids)
    return labels, result


def secure_summary(result: SecureClusteringResult) -> dict[str, Any]:
    """What the run's report says of the secure clustering (all of it public)."""
    plan = result.plan
    return {
        "algorithm": plan.algorithm,
        "dimension": plan.dimension,
        "rounds": list(plan.rounds),
        "noise_multiplier": plan.noise_multiplier,
        "epsilon": plan.epsilon,
        "delta": plan.delta,
        "messages_received_by_server": len(result.transcript),
        "seconds": result.seconds,
    }


def write_centroids(folder: Path, result: SecureClusteringResult, projection: bytes) -> None:
    """The public outcome of the secure clustering: ``centroids.json`` (the k centroids in the
    projected unit box) and ``projection.json`` (the fixed projection every site applies)."""
    doc = {"format": CENTROIDS_FORMAT, "centroids": result.centroids.tolist()}
    write_json_atomic(folder / "centroids.json", doc)
    atomic_write_bytes(folder / "projection.json", projection)
