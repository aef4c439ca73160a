"""DP-SGD at a site (``training.dp_sgd``): calibration, batch sampling, Opacus and ledger charging.

Privacy unit: one patient (with a partition file's Patient_ID, one case of each drawn patient per
step; else every case is its own patient), so a patient contributes at most one per-sample
gradient per step. Per-sample gradients are each sample's own gradient, vectorised with
``torch.func.vmap`` (one backward per sample where vmap cannot run; exact for any model, instance
norm included; ``train_local(per_sample=True)``), Opacus's DPOptimizer clips each to
``max_grad_norm`` (C), adds N(0, (m C)^2) to their sum (``secure_mode``) and divides by the batch
size. Sampling and accounting (``dp_sgd.amplification``):

- replace-one, ``sampling``: each step draws ``batch_size`` of ``N = dp_sgd.population`` public
  patient slots uniformly without replacement (a site with n < N patients pads with empty slots,
  whose draws add nothing; a site with n > N draws from its n patients, a smaller rate charged
  as N). Replacing one patient changes the sum by at most 2C: a step is
  ``SampledWithoutReplacementDpEvent(N, b, GaussianDpEvent(m / 2))`` (RDP of Wang, Balle and
  Kasiviswanathan 2019 in dp-accounting). Finetuning rounds are planned and charged unamplified:
  a cluster's size depends on its patients' features, so replacing one patient may change it (an
  add/remove at the cluster level, where fixed-size batches still bound the change by 2C).
- add-remove-one, ``sampling``: each patient enters each step independently with probability
  ``sampling_rate`` (a declared constant); empty batches are noise-only steps. A step is
  ``PoissonSampledDpEvent(q, GaussianDpEvent(m))`` (sensitivity C); the noisy sum is divided by
  ``batch_size`` (a public constant, never the site's count).
- ``none``: fixed-size batches, each step charged as ``GaussianDpEvent(m / 2)`` (no amplification).

The plan is a function of the protocol alone (``tests/privacy/test_plan_independence.py``): every
round runs exactly ``training.local_steps`` steps, the noisy sum is always divided by the public
``batch_size``, and the sampling population is the declared one, so a site's step count, noise
multiplier, divisor and charged events are the same for n and n + 1 cases and for patients with
one or several cases.

Calibration: m is the smallest multiplier such that every planned step of the study (global rounds
plus finetuning rounds for each cluster the site may join, clustering.k when fixed, else k_max),
composed by the accountant, stays within ``dp_sgd.epsilon`` at ``dp_sgd.delta``.
Each round is charged to the site ledger (stage ``training``) BEFORE Opacus draws any noise.

Batches and crops: drawn from site-local secrets (64 bits of ``os.urandom`` each round), never from
the server's seed, so the server cannot tell which cases entered which step.

Noise (``dp_sgd.noise``): ``float``, Opacus's ``secure_mode`` (floating-point attack mitigation)
from a torch generator seeded with 64 bits of ``os.urandom`` (torch's PRNG, weaker than the CSPRNG
of the feature releases; torchcsprng is not installed); ``discrete-gaussian``, the clipped
per-sample gradients on a lattice plus OpenDP's exact discrete Gaussian
(securefed.training.discrete_dpsgd; unamplified plans only). What leaves the site: the noised
model weights (via the client).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import dp_accounting

from securefed.errors import ConfigError, TrainingError
from securefed.privacy import (
    Ledger,
    accountant_epsilon,
    calibrate_noise_multiplier,
    make_accountant,
)
from securefed.privacy.accounting import grouped
from securefed.protocol import LoadedProtocol, Protocol

__all__ = [
    "STAGE",
    "DPSGDPlan",
    "calibrate_step_multiplier",
    "dp_batches",
    "max_clusters",
    "plan_dpsgd",
    "planned_rounds",
    "planned_steps_per_round",
    "poisson_batches",
    "release_id_for",
    "sampling_of",
    "site_ledger",
    "train_dp_round",
]

STAGE = "training"
_PLAN_CACHE: dict[tuple[Any, ...], DPSGDPlan] = {}


Sampling = Literal["without-replacement", "poisson", "none"]


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
    sampling: Sampling = "none"
    population: int = 0  # declared patient slots (dp_sgd.population; without-replacement only)
    sampling_rate: float = 1.0  # Poisson sampling only
    global_rounds: int = 0
    noise: Literal["float", "discrete-gaussian"] = "float"  # see securefed.training.discrete_dpsgd
    # all-sites membership: the multiplier of the noise on a cluster round's weight (sensitivity
    # one patient; securefed.federation.weighting), charged with the round; 0: no weight sent
    weight_noise: float = 0.0

    def step_event(self, population: int | None = None) -> dp_accounting.DpEvent:
        """One step over ``population`` patients (default: the plan's)."""
        m = self.noise_multiplier
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(
                self.sampling_rate, dp_accounting.GaussianDpEvent(m)
            )
        full = dp_accounting.GaussianDpEvent(m / 2.0)  # sensitivity 2C: one patient replaced
        n = self.population if population is None else int(population)
        if self.sampling == "without-replacement" and min(self.batch_size, n) < n:
            glob = self.steps_per_round * self.global_rounds
            rest = self.steps_per_round * (self.rounds - self.global_rounds)
            if _sampling_helps(n, self.batch_size, m / 2.0, glob, rest, self.delta,
                               self.accountant):  # fmt: skip
                return dp_accounting.SampledWithoutReplacementDpEvent(n, self.batch_size, full)
        return full

    def round_event(self, steps: int, population: int | None = None) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(self.step_event(population), int(steps))

    def finetune_event(self, steps: int) -> dp_accounting.DpEvent:
        """One cluster round: its steps unamplified under without-replacement sampling (see the
        module docstring), with the Gaussian of the round's weight when the site sends one."""
        event = self.round_event(steps, population=self.batch_size)
        if self.weight_noise <= 0:
            return event
        weight = dp_accounting.GaussianDpEvent(self.weight_noise)
        return dp_accounting.ComposedDpEvent([event, weight])

    def planned_events(self) -> list[dp_accounting.DpEvent]:
        """Every planned round: global rounds over the plan's population; finetuning rounds as
        :meth:`finetune_event`."""
        steps = self.steps_per_round
        glob = [self.round_event(steps)] * self.global_rounds
        finetune = [self.finetune_event(steps)] * (self.rounds - self.global_rounds)
        return glob + finetune

    def planned_epsilon(self) -> float:
        """Composed epsilon of every planned round (<= ``epsilon`` by construction)."""
        return accountant_epsilon(self.planned_events(), self.delta, self.accountant)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=4096)
def _sampling_helps(
    n: int, b: int, sigma: float, steps: int, rest: int, delta: float, accountant: str
) -> bool:
    """Whether the plan composes to less with its ``steps`` global steps sampled without
    replacement (RDP, replace-one: the only accountant for them) than with every step plain
    under the protocol's ``accountant`` (PLD is tighter than RDP for plain Gaussians); ``rest``:
    the finetuning steps, plain in both. Both are valid bounds; the smaller is used (sampling
    loses when b/n is large, e.g. 2 of 3, or when PLD's plain bound is the tighter one)."""
    plain = dp_accounting.GaussianDpEvent(sigma)
    wor = dp_accounting.SampledWithoutReplacementDpEvent(n, b, plain)
    tail = [dp_accounting.SelfComposedDpEvent(plain, rest)] if rest > 0 else []
    sampled = accountant_epsilon([dp_accounting.SelfComposedDpEvent(wor, steps), *tail], delta,
                                 accountant)  # fmt: skip
    unsampled = accountant_epsilon([dp_accounting.SelfComposedDpEvent(plain, steps + rest)],
                                   delta, accountant)  # fmt: skip
    return steps > 0 and sampled < unsampled


def max_clusters(protocol: Protocol) -> int:
    """Most clusters a site's cases may fall in (conservative: no parallel composition)."""
    c = protocol.clustering
    return int(c.k if c.k_selection == "fixed" else max(c.k, c.k_max))


def planned_rounds(protocol: Protocol) -> int:
    """Rounds a site may train in: global rounds + finetune rounds for every possible cluster."""
    t = protocol.training
    return int(t.global_rounds) + max_clusters(protocol) * int(t.finetune_rounds)


def planned_steps_per_round(training: Any) -> int:
    """Steps of every DP-SGD round: exactly ``training.local_steps`` (required by the schema with
    DP-SGD), never a function of the site's case count."""
    if training.local_steps is None:
        raise ConfigError(
            "training.local_steps: DP-SGD runs exactly local_steps steps per round; set it"
        )
    return int(training.local_steps)


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


def sampling_of(protocol: Protocol) -> Sampling:
    """The batch sampling the protocol's neighbouring relation and amplification imply."""
    if protocol.training.dp_sgd.amplification == "none":
        return "none"
    return "poisson" if protocol.privacy.neighbouring == "add-remove-one" else "without-replacement"


def plan_dpsgd(protocol: Protocol) -> DPSGDPlan:
    """Calibrate the noise multiplier of every site of ``protocol`` from the protocol's values
    alone (steps, rounds, batch size, declared population or rate). Cached per protocol."""
    dps = protocol.training.dp_sgd
    if not dps.enabled or dps.epsilon is None:
        raise ConfigError("training.dp_sgd is not enabled in this protocol; nothing to plan")
    population = int(dps.population or 0)
    steps = planned_steps_per_round(protocol.training)
    rounds = planned_rounds(protocol)
    kind = protocol.privacy.accountant
    key = (protocol.model_dump_json(), steps, rounds, population)
    if key in _PLAN_CACHE:
        return _PLAN_CACHE[key]
    eps, delta = float(dps.epsilon), float(dps.delta)
    base = DPSGDPlan(
        1.0, float(dps.max_grad_norm), int(protocol.training.batch_size), steps, rounds, eps,
        delta, kind, sampling_of(protocol), population, float(dps.sampling_rate or 1.0),
        int(protocol.training.global_rounds), dps.noise, weight_noise_multiplier(protocol),
    )  # fmt: skip

    def events(m: float) -> dp_accounting.DpEvent:
        plan = DPSGDPlan(**{**base.to_json(), "noise_multiplier": m})
        return dp_accounting.ComposedDpEvent(grouped(plan.planned_events()))

    # A replace-one sampled plan is calibrated by the accountant its ledger will use once a
    # sampled round is charged (make_accountant picks it from the events).
    wor = dp_accounting.SampledWithoutReplacementDpEvent(2, 1, dp_accounting.GaussianDpEvent(1.0))
    probe = [wor] if base.sampling == "without-replacement" else []
    m = calibrate_noise_multiplier(eps, delta, events, lambda: make_accountant(kind, probe))
    plan = DPSGDPlan(**{**base.to_json(), "noise_multiplier": m})
    # The ledger composes one event per round: check that exact composition, round m up if needed.
    for _ in range(50):
        if plan.planned_epsilon() <= eps:
            break
        plan = DPSGDPlan(**{**plan.to_json(), "noise_multiplier": plan.noise_multiplier * 1.001})
    else:  # pragma: no cover
        raise TrainingError(f"DP-SGD calibration: cannot fit {rounds} rounds in eps={eps}")
    _PLAN_CACHE[key] = plan
    return plan


def weight_noise_multiplier(protocol: Protocol) -> float:
    """The Gaussian multiplier of a cluster round's weight (``training.dp_sgd.weight_noise``
    over a sensitivity of one patient) when the site sends one (all-sites membership,
    securefed.federation.weighting), else 0."""
    from securefed.protocol.egress import training_egress

    if training_egress(protocol).cluster_weights != "masked-counts":
        return 0.0
    return float(protocol.training.dp_sgd.weight_noise)


def dp_batches(
    n: int,
    batch: int,
    steps: int,
    seed: int,
    groups: Sequence[str] | None = None,
    population: int = 0,
) -> list[list[int]]:
    """``steps`` batches, each ``batch`` distinct slots of ``max(patients, population)`` drawn
    uniformly without replacement, independently of the other steps; a slot past the site's
    patients is empty (padding to the public ``population``), so a batch may hold fewer cases
    (or none: a noise-only step). With ``groups`` (the patient of each of the ``n`` cases) the
    slots are PATIENTS and one of each drawn patient's cases is taken uniformly, so a patient
    gives at most one per-sample gradient per step whatever its number of cases."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    members = _patients_of(n, groups)
    patients = sorted(members, key=lambda p: members[p][0])
    slots = max(len(patients), int(population))
    size = min(int(batch), slots)
    out = []
    for _ in range(int(steps)):
        chosen = [c for c in torch.randperm(slots, generator=gen)[:size].tolist()
                  if c < len(patients)]  # fmt: skip
        cases = [members[patients[c]] for c in chosen]
        out.append([m[int(torch.randint(len(m), (1,), generator=gen))] if len(m) > 1 else m[0]
                    for m in cases])  # fmt: skip
    return out


def _patients_of(n: int, groups: Sequence[str] | None) -> dict[str, list[int]]:
    if groups is None:
        return {str(i): [i] for i in range(int(n))}
    if len(groups) != n:
        raise TrainingError(f"DP-SGD: {len(groups)} patient ids for {n} cases")
    members: dict[str, list[int]] = {}
    for i, patient in enumerate(groups):
        members.setdefault(str(patient), []).append(i)
    return members


def poisson_batches(
    n: int, rate: float, steps: int, seed: int, groups: Sequence[str] | None = None
) -> list[list[int]]:
    """``steps`` Poisson-sampled batches: every patient (``groups``: the patient of each of the
    ``n`` cases, else one patient per case) enters each step independently with probability
    ``rate``, with one of its cases drawn uniformly. Batches may be empty."""
    import torch

    if not 0 < rate <= 1:
        raise TrainingError(f"DP-SGD: sampling rate {rate} outside (0, 1]")
    gen = torch.Generator().manual_seed(int(seed))
    members = _patients_of(n, groups)
    patients = sorted(members)
    out = []
    for _ in range(int(steps)):
        keep = (torch.rand(len(patients), generator=gen) < rate).tolist()
        cases = [members[p] for p, k in zip(patients, keep, strict=True) if k]
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
    lr: float,
    device: Any = None,
    seed: int = 0,
    noise_seed: int | None = None,
    groups: Sequence[str] | None = None,
    finetuning: bool = False,
) -> dict[str, Any]:
    """One round of DP-SGD on ``model`` in place. ``groups``: the patient of each case of
    ``data`` when a patient may have several (batches then sample patients). Runs exactly
    ``plan.steps_per_round`` steps and charges ``plan.round_event`` over the plan's public
    population to ``ledger`` before any noise; a ``finetuning`` (cluster) round is charged
    unamplified: a
    cluster's size depends on its patients' features, so replacing one patient may change it,
    which sampling without replacement from a fixed population does not
    cover. Raises BudgetExceededError past the budget, nothing trained.
    Batches, crops and noise are drawn from site-local secrets; ``seed`` (the server's) is not
    used for any of them. ``noise_seed``: simulation only (protocol ``unsafe_seeded_noise``),
    seeds all three. Returns train_local's dict plus ``epsilon_spent`` (site total) and
    ``noise_multiplier``."""
    import torch
    from opacus.optimizers import DPOptimizer

    from securefed.privacy.noise import SecureNoise, UnsafeSeededNoise
    from securefed.training.discrete_dpsgd import DiscreteGaussianDPOptimizer
    from securefed.training.local import make_optimizer, train_local

    if not data and not (finetuning and plan.weight_noise > 0):
        raise TrainingError("DP-SGD: no train cases in this round")
    # all-sites membership: a site without cases of the cluster runs the same round, every step
    # noise only, so that what it sends is the same DP mechanism on an empty cluster
    steps = plan.steps_per_round  # the protocol's, never the server's or the site's count
    population = plan.batch_size if finetuning else plan.population
    # Batches, crops and noise come from site-local secrets (64 bits of os.urandom each), never
    # from the server's seed: the server must not know which cases enter which step.
    batch_seed, crop_seed, gen_seed = _round_secrets(noise_seed)
    divisor = plan.batch_size  # a public constant, never the site's count
    if plan.sampling == "poisson":
        batches = poisson_batches(len(data), plan.sampling_rate, steps, batch_seed, groups)
    else:
        pad = plan.population if plan.sampling == "without-replacement" and not finetuning else 0
        batches = dp_batches(len(data), plan.batch_size, steps, batch_seed, groups, pad)
    if plan.noise == "discrete-gaussian" and plan.sampling != "none":
        raise TrainingError(
            "DP-SGD: discrete Gaussian noise is accounted without amplification by sampling; "
            "the protocol must declare training.dp_sgd.amplification = 'none'"
        )
    event = plan.finetune_event(steps) if finetuning else plan.round_event(steps, population)
    with ledger.charge(STAGE, release_id, event) as handle:
        base = make_optimizer(model, spec, float(lr))
        if plan.noise == "discrete-gaussian":
            exact = noise_seed is None
            opt = DiscreteGaussianDPOptimizer(
                base,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm,
                expected_batch_size=divisor,
                noise=SecureNoise() if exact else UnsafeSeededNoise(gen_seed, "dp-sgd", release_id),
                rounding_seed=None if exact else gen_seed + 1,
            )
        else:
            gen = torch.Generator()
            gen.manual_seed(gen_seed)
            opt = DPOptimizer(
                base,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm,
                expected_batch_size=divisor,
                loss_reduction="mean",
                generator=gen,
                secure_mode=True,
            )
        try:
            out = train_local(
                model, data, spec, epochs=1, max_steps=None, lr=float(lr), device=device,
                seed=crop_seed, optimizer=opt, batches=batches, per_sample=True,
            )  # fmt: skip
        finally:
            for p in model.parameters():  # Opacus's per-parameter state: nothing kept
                for name in ("grad_sample", "summed_grad"):
                    if hasattr(p, name):
                        delattr(p, name)
    return {
        **out,
        "epsilon_spent": handle.spent_epsilon,
        "noise_multiplier": plan.noise_multiplier,
        "noise": plan.noise,
    }
