"""DP-SGD at a site (``training.dp_sgd``): calibration, batch sampling, Opacus and ledger charging.

Privacy unit: one patient. Each step draws ``min(batch_size, n)`` DISTINCT patients uniformly
without replacement (with a partition file's Patient_ID, one case of each drawn patient; else
every case is its own patient) and one crop per drawn case, so a patient contributes at most one
per-sample gradient per step; Opacus clips each to ``max_grad_norm`` (C) and adds N(0, (m C)^2) to
their sum. Replacing one patient (or adding/removing one, under fixed-size batches) changes that sum
by at most 2C, so each step is recorded as ``GaussianDpEvent(m / 2)`` (the ledger's convention:
multiplier normalised by the sensitivity). No amplification by sampling is claimed (conservative):
Poisson sampling yields empty batches that crash instance-norm models, and dp-accounting accounts
sampling without replacement only under replace-one relations, not with the ledger's convention.

Calibration: m is the smallest multiplier such that every planned step of the study (global rounds
plus finetuning rounds for each cluster the site may join, clustering.k when fixed, else k_max),
composed by the protocol's accountant, stays within ``dp_sgd.epsilon`` at ``dp_sgd.delta``.
Each round is charged to the site ledger (stage ``training``) BEFORE Opacus draws any noise.

Batches and crops: drawn from site-local secrets (64 bits of ``os.urandom`` each round), never from
the server's seed, so the server cannot tell which cases entered which step.

Noise: Opacus's ``secure_mode`` (floating-point attack mitigation) from a torch generator seeded
with 64 bits of ``os.urandom`` (torch's PRNG, weaker than the CSPRNG of the feature releases;
torchcsprng is not installed). What leaves the site: the noised model weights (via the client).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dp_accounting

from securefed.errors import ConfigError, TrainingError
from securefed.privacy import (
    Ledger,
    accountant_epsilon,
    calibrate_noise_multiplier,
    make_accountant,
)
from securefed.protocol import LoadedProtocol, Protocol

__all__ = [
    "STAGE",
    "DPSGDPlan",
    "max_clusters",
    "planned_rounds",
    "planned_steps_per_round",
    "plan_dpsgd",
    "calibrate_step_multiplier",
    "dp_batches",
    "site_ledger",
    "release_id_for",
    "train_dp_round",
]

STAGE = "training"
_PLAN_CACHE: dict[tuple[Any, ...], DPSGDPlan] = {}


@dataclass(frozen=True)
class DPSGDPlan:
    """The calibrated DP-SGD setting of one site for the whole study."""

    noise_multiplier: float  # Opacus's: noise std = noise_multiplier * max_grad_norm
    max_grad_norm: float
    batch_size: int
    steps_per_round: int
    rounds: int
    epsilon: float
    delta: float
    accountant: str

    def step_event(self) -> dp_accounting.DpEvent:
        """One step: Gaussian with L2 sensitivity 2C (one patient replaced in the batch)."""
        return dp_accounting.GaussianDpEvent(self.noise_multiplier / 2.0)

    def round_event(self, steps: int) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(self.step_event(), int(steps))

    def planned_epsilon(self) -> float:
        """Composed epsilon of every planned round (<= ``epsilon`` by construction)."""
        events = [self.round_event(self.steps_per_round)] * self.rounds
        return accountant_epsilon(events, self.delta, self.accountant)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def max_clusters(protocol: Protocol) -> int:
    """Most clusters a site's cases may fall in (conservative: no parallel composition)."""
    c = protocol.clustering
    return int(c.k if c.k_selection == "fixed" else max(c.k, c.k_max))


def planned_rounds(protocol: Protocol) -> int:
    """Rounds a site may train in: global rounds + finetune rounds for every possible cluster."""
    t = protocol.training
    return int(t.global_rounds) + max_clusters(protocol) * int(t.finetune_rounds)


def planned_steps_per_round(training: Any, n_train: int) -> int:
    """Steps per round: ``local_steps`` when set, capped by ``local_epochs * ceil(n / batch)``
    with ``n`` the site's train cases over all clusters (a cluster phase has at most as many)."""
    if n_train < 1:
        raise TrainingError("DP-SGD: the site has no train cases to plan for")
    per_epochs = int(training.local_epochs) * math.ceil(n_train / int(training.batch_size))
    if training.local_steps is not None:
        return max(1, min(int(training.local_steps), per_epochs))
    return max(1, per_epochs)


def calibrate_step_multiplier(
    epsilon: float, delta: float, total_steps: int, accountant: str
) -> float:
    """Opacus's noise multiplier m for ``total_steps`` DP-SGD steps within (epsilon, delta): each
    step recorded as ``GaussianDpEvent(m / 2)`` (sensitivity 2C: one patient replaced), composed
    by the protocol's accountant. Shared by the site's plan and the DP audit."""

    def event(m: float) -> dp_accounting.DpEvent:
        step = dp_accounting.GaussianDpEvent(m / 2.0)
        return dp_accounting.SelfComposedDpEvent(step, int(total_steps))

    return calibrate_noise_multiplier(epsilon, delta, event, lambda: make_accountant(accountant))


def plan_dpsgd(protocol: Protocol, n_train: int) -> DPSGDPlan:
    """Calibrate the noise multiplier for this site (cached per protocol and ``n_train``)."""
    dps = protocol.training.dp_sgd
    if not dps.enabled or dps.epsilon is None:
        raise ConfigError("training.dp_sgd is not enabled in this protocol; nothing to plan")
    steps = planned_steps_per_round(protocol.training, n_train)
    rounds = planned_rounds(protocol)
    kind = protocol.privacy.accountant
    key = (protocol.model_dump_json(), steps, rounds)
    if key in _PLAN_CACHE:
        return _PLAN_CACHE[key]
    eps, delta = float(dps.epsilon), float(dps.delta)
    m = calibrate_step_multiplier(eps, delta, steps * rounds, kind)
    plan = DPSGDPlan(
        m, float(dps.max_grad_norm), int(protocol.training.batch_size), steps, rounds, eps, delta,
        kind,
    )  # fmt: skip
    # The ledger composes one event per round: check that exact composition, round m up if needed.
    for _ in range(50):
        if plan.planned_epsilon() <= eps:
            break
        plan = DPSGDPlan(**{**plan.to_json(), "noise_multiplier": plan.noise_multiplier * 1.001})
    else:  # pragma: no cover
        raise TrainingError(f"DP-SGD calibration: cannot fit {rounds} rounds in eps={eps}")
    _PLAN_CACHE[key] = plan
    return plan


def dp_batches(
    n: int, batch: int, steps: int, seed: int, groups: Sequence[str] | None = None
) -> list[list[int]]:
    """``steps`` batches of ``min(batch, n)`` distinct case indices, each drawn uniformly without
    replacement and independently of the other steps. With ``groups`` (the patient of each of
    the ``n`` cases) a step draws distinct PATIENTS the same way and one of each drawn patient's
    cases uniformly, so a patient gives at most one per-sample gradient per step whatever its
    number of cases."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    if groups is None:
        size = min(int(batch), int(n))
        return [torch.randperm(n, generator=gen)[:size].tolist() for _ in range(int(steps))]
    if len(groups) != n:
        raise TrainingError(f"DP-SGD: {len(groups)} patient ids for {n} cases")
    members: dict[str, list[int]] = {}
    for i, patient in enumerate(groups):
        members.setdefault(str(patient), []).append(i)
    patients = sorted(members)
    size = min(int(batch), len(patients))
    out = []
    for _ in range(int(steps)):
        chosen = torch.randperm(len(patients), generator=gen)[:size].tolist()
        cases = [members[patients[c]] for c in chosen]
        out.append([m[int(torch.randint(len(m), (1,), generator=gen))] for m in cases])
    return out


def site_ledger(loaded: LoadedProtocol, partition_id: int, folder: str | Path) -> Ledger:
    """The site's ledger in ``folder``, bound to the protocol's site of ``partition_id``
    (``site-<id>`` when a simulation protocol lists no sites: ``Protocol.resolve_sites``), the
    same ledger as the site's feature and clustering releases."""
    sites = loaded.protocol.resolve_sites([int(partition_id)])
    ids = [s.id for s in sites if int(s.partition_id) == int(partition_id)]
    if len(ids) != 1:
        raise ConfigError(
            f"protocol [[sites]]: no single site with partition_id {partition_id}; DP-SGD charges "
            "the ledger of that site, so the protocol must list it"
        )
    return Ledger.for_protocol(folder, loaded, ids[0])


def release_id_for(ledger: Ledger, phase: str, server_round: int) -> str:
    """``training/<phase>/round-<r>``; a rerun of a committed round gets ``/rerun-<i>`` (charged
    again). An uncommitted intent (crash mid-round) is reused: charged once."""
    base = f"training/{phase}/round-{int(server_round)}"
    committed = ledger.verify().committed
    rid, i = base, 1
    while rid in committed:
        rid, i = f"{base}/rerun-{i}", i + 1
    return rid


def _round_secrets(noise_seed: int | None) -> tuple[int, int, int]:
    """Seeds of one round's batch sampling, crop sampling and Opacus noise: fresh site-local
    secrets from os.urandom, or (simulation with ``unsafe_seeded_noise`` only) derived from
    ``noise_seed`` so that a seeded study is reproducible."""
    if noise_seed is None:
        a, b, c = (int.from_bytes(os.urandom(8), "big") >> 1 for _ in range(3))
        return a, b, c
    return int(noise_seed), int(noise_seed) + 1, int(noise_seed) + 2


def train_dp_round(
    model: Any,
    data: Sequence[dict[str, Any]],
    spec: Any,
    *,
    plan: DPSGDPlan,
    ledger: Ledger,
    release_id: str,
    steps: int,
    lr: float,
    device: Any = None,
    seed: int = 0,
    noise_seed: int | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One round of DP-SGD on ``model`` (the Opacus-capable variant) in place. ``groups``: the
    patient of each case of ``data`` when a patient may have several (batches then sample
    patients, :func:`dp_batches`). ``steps`` is
    capped at ``plan.steps_per_round``. Charges ``plan.round_event(steps)`` to ``ledger`` before
    any noise (raises BudgetExceededError past the budget, nothing trained). Batches, crops and
    noise are drawn from site-local secrets; ``seed`` (the server's) is not used for any of them.
    ``noise_seed``: simulation only (protocol ``unsafe_seeded_noise``), seeds all three.
    Returns train_local's dict plus ``epsilon_spent`` (site total) and ``noise_multiplier``."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from securefed.training.local import make_optimizer, train_local

    if not data:
        raise TrainingError("DP-SGD: no train cases in this round")
    steps = min(int(steps), plan.steps_per_round)
    if steps < 1:
        raise TrainingError(f"DP-SGD: {steps} steps requested; expected >= 1")
    # Batches, crops and noise come from site-local secrets (64 bits of os.urandom each), never
    # from the server's seed: the server must not know which cases enter which step.
    batch_seed, crop_seed, gen_seed = _round_secrets(noise_seed)
    batches = dp_batches(len(data), plan.batch_size, steps, batch_seed, groups)
    with ledger.charge(STAGE, release_id, plan.round_event(steps)) as handle:
        gsm = GradSampleModule(model)
        try:
            gen = torch.Generator()
            gen.manual_seed(gen_seed)
            opt = DPOptimizer(
                make_optimizer(gsm, spec, float(lr)),
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm,
                expected_batch_size=len(batches[0]),
                loss_reduction="mean",
                generator=gen,
                secure_mode=True,
            )
            with warnings.catch_warnings():  # Opacus hooks: the input needs no gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                out = train_local(
                    gsm, data, spec, epochs=1, max_steps=None, lr=float(lr), device=device,
                    seed=crop_seed, optimizer=opt, batches=batches,
                )  # fmt: skip
        finally:
            gsm._close()
    return {
        **out,
        "epsilon_spent": handle.spent_epsilon,
        "noise_multiplier": plan.noise_multiplier,
    }
