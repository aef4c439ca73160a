"""Client-level DP rounds (``training.client_dp``): a site's noised update under SecAgg+ and the
server's decoding of the sum (securefed.privacy.ddg has the mechanism and its accounting).

The plan comes from the site's own protocol copy alone (budget, clip, planned rounds, collusion,
the most sites of an aggregate: ``Protocol.client_dp_max_sites``) and the model's size; nothing in
the coordinator's message enters it (a per-site ``num-sites`` could give sites different
granularities and shrink an honest partner's share of the noise). The server derives the same
plan from the run config's ``client-dp`` (these inputs, JSON) to decode the sum.

Each round is charged to the site ledger (stage ``training``, release ``training/<phase>/round-r``)
BEFORE any noise is drawn; past the budget the site refuses (BudgetExceededError) and sends
nothing. What leaves the site: the encoded vector of :func:`securefed.privacy.ddg.encode_update`,
masked by SecAgg+.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from securefed.errors import ConfigError
from securefed.privacy.ddg import (
    ClientDPPlan,
    decode_sum,
    encode_update,
    flatten,
    plan_client_dp,
    rotation_seed,
    unflatten,
)
from securefed.privacy.noise import noise_source_for
from securefed.protocol import LoadedProtocol, Protocol
from securefed.training.dpsgd import planned_rounds, release_id_for, site_ledger

__all__ = [
    "STAGE",
    "decode_round",
    "encode_round",
    "model_values",
    "phase_name",
    "plan_from_inputs",
    "plan_inputs",
    "site_plan",
]

STAGE = "training"


def plan_inputs(protocol: Protocol) -> dict[str, Any]:
    """The protocol's values that fix the plan (with the model size and phase's site count)."""
    cdp = protocol.training.client_dp
    if not cdp.enabled or cdp.epsilon is None:
        raise ConfigError("training.client_dp is not enabled in this protocol; nothing to plan")
    sa = protocol.secure_aggregation
    fewest = min(protocol.training.min_sites_per_aggregate, sa.reconstruction_threshold)
    return {
        "epsilon": float(cdp.epsilon),
        "delta": float(cdp.delta),
        "rounds": planned_rounds(protocol),
        "clip": float(cdp.clip_norm),
        "modulus": int(sa.quantization_range),
        "honest": int(fewest - cdp.max_colluding_sites),
        "n_max": protocol.client_dp_max_sites(),
        "beta": float(cdp.rounding_beta),
        "accountant": protocol.privacy.accountant,
    }


@functools.lru_cache(maxsize=64)
def _plan(inputs_json: str, dim: int) -> ClientDPPlan:
    inputs = json.loads(inputs_json)
    inputs["n_max"] = max(int(inputs["n_max"]), int(inputs["honest"]))
    return plan_client_dp(**inputs, dim=int(dim))


def plan_from_inputs(inputs: dict[str, Any], dim: int) -> ClientDPPlan:
    """The plan for a model of ``dim`` values (cached); every other input is the protocol's."""
    return _plan(json.dumps(inputs, sort_keys=True), int(dim))


def site_plan(protocol: Protocol, dim: int) -> ClientDPPlan:
    """The site's plan: its own protocol copy and the model's size, nothing from the server."""
    return plan_from_inputs(plan_inputs(protocol), dim)


def model_values(training: Any) -> int:
    """Values of the protocol's model as a site sends it (each shared tensor once)."""
    from securefed.models import build_model

    model = build_model(training)
    seen: dict[int, int] = {}
    for tensor in model.state_dict(keep_vars=True).values():
        seen.setdefault(id(tensor), int(tensor.numel()))
    return sum(seen.values())


def phase_name(cluster: int) -> str:
    return "global" if int(cluster) < 0 else f"cluster-{int(cluster)}"


def encode_round(
    *,
    loaded: LoadedProtocol,
    partition_id: int,
    ledger_dir: str,
    received: list[np.ndarray],
    weights: list[np.ndarray],
    config: dict[str, Any],
) -> tuple[list[np.ndarray], float]:
    """Charge this round to the site's ledger, then encode ``weights - received`` with the
    site's noise share: ``([vector], epsilon spent by the site so far)``."""
    if not ledger_dir:
        raise ConfigError(
            f"site {partition_id}: client-level DP needs the site's privacy ledger; set node "
            "config 'ledger-dir' (or 'work-dir')"
        )
    start = flatten(received)
    update = flatten(weights) - start
    plan = site_plan(loaded.protocol, update.size)
    rnd = int(config.get("server-round", 0))
    phase = phase_name(int(config.get("cluster", -1)))
    ledger = site_ledger(loaded, partition_id, ledger_dir)
    release_id = release_id_for(ledger, phase, rnd)
    seed = rotation_seed(loaded.sha256, phase, rnd)
    with ledger.charge(STAGE, release_id, plan.round_event()) as handle:
        site_id = ledger.site_id
        noise = noise_source_for(loaded.protocol, site_id, release_id)
        vector = encode_update(update, plan, seed, noise)
    return [vector], float(handle.spent_epsilon)


def decode_round(
    inputs: dict[str, Any],
    start: list[np.ndarray],
    aggregate: list[np.ndarray],
    *,
    n_sites: int,
    protocol_hash: str,
    cluster: int,
    server_round: int,
) -> list[np.ndarray]:
    """The server's new model: the round's start model plus the decoded mean update of the
    ``n_sites`` sites whose vectors SecAgg+ summed (``aggregate``: Flower's mean of them)."""
    if len(aggregate) != 1:
        raise ConfigError(f"client-level DP: expected one aggregated vector, got {len(aggregate)}")
    flat = flatten(start)
    plan = plan_from_inputs(inputs, flat.size)
    seed = rotation_seed(protocol_hash, phase_name(cluster), server_round)
    mean = decode_sum(np.asarray(aggregate[0]), int(n_sites), plan, seed)
    return unflatten(flat + mean, start)
