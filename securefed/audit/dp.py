"""Empirical DP audits (``securefed audit dp``): a lower bound on each mechanism's epsilon, the
largest epsilon the run could certify, and its power against a 2x violation.

Every mechanism is audited through the code path a site runs, on neighbouring inputs the audit
builds, with the noise scale, sensitivity, rounds and shares the site's own plan gives for a
protocol (``audit dp RUNDIR``: the run's protocol; without RUNDIR: the shipped demo protocols with
their stage's claim set to ``--epsilon``/``--delta``):

- ``feature-gaussian`` / ``feature-laplace``: the local-dp release. Noise scale and sensitivity
  from ``securefed.privacy.protection.local_dp_plan`` (the function ``protect_features`` calls),
  noise from the release's sampler (``noise_source_for``: OpenDP's discrete Gaussian / Laplace on
  the 2^-12 grid); the neighbours differ by the whole grid sensitivity along one coordinate (the
  privacy loss of iid noise depends on the shift's norm only).
- ``clustering-shares``: the secure-aggregate clustering. Rounds, sensitivities and noise
  multiplier from ``plan_secure_clustering`` at the protocol's projection dimension; each honest
  site's share as ``distributed_discrete_gaussian_share`` sizes it (``min_sites_per_aggregate``
  participants, ``max_colluding_sites`` of them removing theirs); every planned round, the
  neighbours differing by the round's sensitivity.
- ``client-dp``: client-level DP (``training.client_dp``). The plan from
  ``securefed.training.client_dp.site_plan`` (the protocol's model size), every planned round
  through ``securefed.privacy.ddg.encode_update`` with the neighbouring updates ``+C u`` and
  ``-C u`` (sensitivity twice the bound under every relation), ``u`` the worst-case direction of
  the round's public rotation (all of the rotated update on one coordinate), plus the honest
  sites' noise as ``encode_update`` asks the sampler for it.
- ``dp-sgd`` / ``dp-sgd-discrete``: the one-run audit (securefed.audit.one_run) of the plan of
  ``securefed.training.dpsgd.plan_dpsgd``: its multiplier, every planned step, the site's batch
  samplers and step optimizer.
- ``float-laplace``: a float64 Laplace sampler (securefed's release noise before the discrete
  samplers): a reference the audit must catch (not in the default set, not in any protocol).

Three readings of each row:

1. ``lower_bound``: valid for ANY mechanism. Threshold test ``statistic >= t`` on ``trials``
   outputs at each input, ``t`` fixed in advance from the plan's public noise (where a 2x
   violation is caught best: securefed.audit.dp_power), ``epsilon >= log((TPR_lo - delta) /
   FPR_hi)`` with Clopper-Pearson bounds at ``confidence`` (Bonferroni-split between the two
   rates). The statistic is the likelihood ratio's sufficient statistic of the claimed noise
   (the sum over rounds and shares). Mironov's floating-point distinguisher
   (securefed.audit.float_distinguisher) runs on the outputs: any output impossible at the base
   input and possible at the neighbour makes the bound infinite. DP-SGD: the one-run bound.
2. ``max_certifiable``: the largest bound the run could produce (every neighbour output passes,
   no base output does; one-run: every guess right). A claim at or above it is
   ``inconclusive``, never ``ok``; ``power_2x`` is the probability that the bound exceeds the
   claim when the mechanism adds half its noise standard deviation (exact binomial sums for the
   threshold test, a simulation of the canary scores for the one-run audit).
3. ``noise_check``: the noise measured in the same outputs (the shift over the standard
   deviation, one-sided confidence bound) read through the plan's own accounting: the epsilon
   the protocol's accountant gives for that much noise. Valid for noise of the designed shape
   (Gaussian / Laplace: every securefed mechanism), it catches an under-noised implementation
   (a wrong sensitivity, plan or factor) at any claim with few trials, where the distribution-free
   bound cannot at large epsilon (docs/auditing.md has the numbers).

``status``: ``finding`` (the bound, or the noise check's epsilon, above the claim: exit 4),
``inconclusive`` (no finding, claim >= max_certifiable) or ``ok``. ``noise_scale`` < 1
(simulation only, never for a real claim) multiplies every mechanism's noise: the audit's power
is shown by the status turning ``finding``.
"""

from __future__ import annotations

import functools
import math
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
from scipy.stats import norm

from securefed.audit import dp_power
from securefed.audit.float_distinguisher import float_laplace_impossible, grid_impossible
from securefed.errors import ConfigError
from securefed.fileio import write_json_atomic
from securefed.privacy.noise import SecureNoise, noise_source_for
from securefed.protocol import LoadedProtocol, parse_protocol, protocol_hash
from securefed.stats import clopper_pearson

__all__ = [
    "CONFIDENCE",
    "DEFAULT_MECHANISMS",
    "MECHANISMS",
    "ONE_RUN",
    "MechanismAudit",
    "audit_mechanism",
    "claim_protocol",
    "clopper_pearson",
    "epsilon_lower_bound",
    "protocol_mechanisms",
    "run_dp_audit",
]

CONFIDENCE = 0.999
QUICK_TRIALS = 20_000
QUICK_CANARIES = {"float": 2000, "discrete-gaussian": 1000}
MAX_CANARIES = {"float": 200_000, "discrete-gaussian": 10_000}
MAX_TRIALS = 4_000_000
MAX_DRAWS = 8_000_000  # OpenDP draws per mechanism row (about 50,000 a second here)


@dataclass(frozen=True)
class Draws:
    """Outputs of a mechanism at one input, reduced to the test's standardised statistic, and
    which outputs the base input cannot produce (Mironov's distinguisher)."""

    statistic: np.ndarray
    impossible_at_base: np.ndarray


@dataclass(frozen=True)
class MechanismAudit:
    """One mechanism as the audit runs it: draws at the base (0) and neighbouring (1) input,
    standardised so that under the CLAIMED noise the base statistic follows the family's unit
    law and the neighbour's is shifted by ``shift``."""

    name: str
    claimed_epsilon: float
    delta: float
    family: str  # "gaussian" | "laplace"
    shift: float  # standardised shift at the claimed noise
    sample: Callable[[int, int], Draws]  # (0 base | 1 neighbour, n) -> draws
    implied_epsilon: Callable[[float], float]  # measured shift (standardised) -> epsilon
    draws_per_trial: int  # sampler draws per output and input (the cost)
    description: str
    code_path: tuple[str, ...]


class _Requested:
    """A noise source that records what the site's code asks for and returns zeros: the audit
    reads the scale a site's function requests, then draws that noise itself."""

    name = "audit-recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, tuple[int, ...]]] = []

    def _zeros(self, kind: str, scale: float, shape: tuple[int, ...]) -> np.ndarray:
        self.calls.append((kind, float(scale), tuple(shape)))
        return np.zeros(shape, dtype=np.int64)

    def discrete_gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        return self._zeros("gaussian", sigma, shape)

    def discrete_laplace(self, scale: float, shape: tuple[int, ...]) -> np.ndarray:
        return self._zeros("laplace", scale, shape)

    def gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        return self._zeros("float-gaussian", sigma, shape).astype(np.float64)

    def laplace(self, scale: float, shape: tuple[int, ...]) -> np.ndarray:
        return self._zeros("float-laplace", scale, shape).astype(np.float64)


@dataclass(frozen=True)
class _Component:
    """Part of a Gaussian mechanism's output, in integer units: the neighbour adds ``shift``
    (summed over its rounds), the base nothing; noise is the sum of ``draws`` iid discrete
    Gaussians of ``sigma`` (the scale the site's code requests); a ``modulus`` is reduced
    (centred) as the server decodes it."""

    shift: float
    sigma: float
    draws: int
    modulus: int | None = None
    base: float = 0.0  # the base input's output (reduced with the noise when there is a modulus)

    @property
    def variance(self) -> float:
        return self.draws * self.sigma**2


def _gaussian_mechanism(
    name: str,
    claimed: float,
    delta: float,
    components: list[_Component],
    noise: Any,
    noise_scale: float,
    implied: Callable[[float], float],
    description: str,
    code_path: tuple[str, ...],
    *,
    combine: bool = True,
) -> MechanismAudit:
    """The likelihood-ratio statistic of additive discrete Gaussian components: sum over
    components of ``shift / variance * output``, standardised by the claimed noise. With
    ``combine`` the ``draws`` iid shares of a component are drawn as one discrete Gaussian of
    their summed variance (equal in law up to Kairouz-Liu-Steinke's tau, 0.0 in double precision
    at these scales; the fact the accounting of the shares uses); else one by one."""
    weights = [c.shift / c.variance for c in components]
    mu = math.sqrt(sum(c.shift**2 / c.variance for c in components))

    def sample(which: int, n: int) -> Draws:
        total = np.zeros(n)
        off = np.zeros(n, dtype=bool)
        for c, w in zip(components, weights, strict=True):
            if combine:
                z = noise.discrete_gaussian(c.sigma * noise_scale * math.sqrt(c.draws), (n,))
                y = np.asarray(z, dtype=np.float64)
            else:
                y = np.zeros(n)
                for _ in range(c.draws):
                    y += np.asarray(noise.discrete_gaussian(c.sigma * noise_scale, (n,)), float)
            y = y + (round(c.shift) if which else 0)
            if c.modulus is not None:
                m = c.modulus
                y = np.mod(y + c.base + m // 2, m) - m // 2 - c.base
            off |= grid_impossible(y, 0)
            total += w * y
        return Draws(total / mu, off)

    return MechanismAudit(name, claimed, delta, "gaussian", mu, sample, implied,
                          sum(c.draws if not combine else 1 for c in components),
                          description, code_path)  # fmt: skip


# -- the mechanisms, through the site's code path --------------------------------------------------
def feature_release(loaded: LoadedProtocol, noise_scale: float = 1.0) -> MechanismAudit:
    """The local-dp release of ``loaded``: ``local_dp_plan`` gives the scale and sensitivity on
    the 2^-12 grid, ``noise_source_for`` the sampler (as ``protect_features``)."""
    from securefed.privacy.calibration import laplace_epsilon
    from securefed.privacy.protection import FEATURES_STAGE, GRID, local_dp_plan

    plan = local_dp_plan(loaded)
    source = noise_source_for(loaded.protocol, "audit", FEATURES_STAGE)
    scale = plan.scale / GRID  # grid units, as protect_features draws it
    sens = plan.sensitivity / GRID
    shift = math.floor(sens + 1e-9)  # an integer grid shift within the sensitivity
    where = (f"{plan.geometry.kind} projection to {plan.geometry.dimension} values, "
             f"{'L2' if plan.mechanism == 'gaussian' else 'L1'} sensitivity {sens:.1f} grid "
             "units (rounding included)")  # fmt: skip
    path = ("securefed.privacy.protection.local_dp_plan",
            "securefed.privacy.noise.noise_source_for")  # fmt: skip
    if plan.mechanism == "gaussian":
        implied = _gaussian_implied([dp_accounting.GaussianDpEvent], plan.delta, "rdp")
        return _gaussian_mechanism(
            "feature-gaussian", plan.epsilon, plan.delta,
            [_Component(float(shift), scale, 1)], source, noise_scale, implied,
            f"local-dp release (discrete Gaussian, OpenDP): sigma {scale:.1f} grid units, "
            f"{where}; the neighbours differ by {shift} units along one coordinate", path,
        )  # fmt: skip

    def sample(which: int, n: int) -> Draws:
        y = np.asarray(source.discrete_laplace(scale * noise_scale, (n,)), float)
        y = y + (shift if which else 0)
        return Draws(y / scale, grid_impossible(y, 0))

    return MechanismAudit(
        "feature-laplace", plan.epsilon, 0.0, "laplace", shift / scale, sample,
        lambda measured: measured, 1,
        f"local-dp release (discrete Laplace, OpenDP): scale {scale:.1f} grid units, {where}; "
        f"the neighbours differ by {shift} units along one coordinate (epsilon "
        f"{laplace_epsilon(scale, shift):.4g} of the shift)", path,
    )  # fmt: skip


def clustering_shares(
    loaded: LoadedProtocol, noise_scale: float = 1.0, *, combine: bool = True
) -> MechanismAudit:
    """The secure-aggregate clustering of ``loaded``: every round of ``plan_secure_clustering``
    with the honest sites' shares as ``distributed_discrete_gaussian_share`` sizes them."""
    from securefed.clustering.secure import plan_secure_clustering
    from securefed.privacy.accounting import accountant_epsilon
    from securefed.privacy.noise import SHARE_GRID, distributed_discrete_gaussian_share

    protocol = loaded.protocol
    dim = _projection_dimension(loaded)
    plan = plan_secure_clustering(protocol, dim)
    parts = plan.min_sites
    honest = parts - plan.colluding
    components = []
    for kind in sorted(set(plan.rounds)):
        rounds = plan.rounds.count(kind)
        asked = _Requested()
        distributed_discrete_gaussian_share(asked, plan.sigma(kind), parts, (1,),
                                            min_contributors=honest)  # fmt: skip
        units = asked.calls[0][1]
        shift = math.floor(plan.sensitivity(kind) / SHARE_GRID + 1e-9)
        components.append(_Component(float(shift * rounds), units, honest * rounds))
    m = len(plan.rounds)

    def implied(mu: float) -> float:
        if mu <= 0:
            return 0.0
        step = dp_accounting.GaussianDpEvent(math.sqrt(m) / mu)
        event = dp_accounting.SelfComposedDpEvent(step, m)
        return accountant_epsilon([event], plan.delta, protocol.privacy.accountant)

    rounds_text = ", ".join(f"{plan.rounds.count(k)} {k}" for k in sorted(set(plan.rounds)))
    return _gaussian_mechanism(
        "clustering-shares", plan.epsilon, plan.delta, components, _noise(loaded, "clustering"),
        noise_scale, implied,
        f"secure-aggregate clustering ({plan.algorithm}, {rounds_text} round(s), d = {dim}): "
        f"the {honest} honest of {parts} sites' discrete Gaussian shares "
        f"({', '.join(f'{c.sigma:.0f}' for c in components)} grid units each), noise multiplier "
        f"{plan.noise_multiplier:.4g}; the neighbours differ by each round's sensitivity",
        ("securefed.clustering.secure.plan_secure_clustering",
         "securefed.privacy.noise.distributed_discrete_gaussian_share"),
        combine=combine,
    )  # fmt: skip


def client_dp(
    loaded: LoadedProtocol,
    noise_scale: float = 1.0,
    *,
    dim: int | None = None,
    combine: bool = True,
) -> MechanismAudit:
    """Client-level DP of ``loaded``: ``site_plan`` for the protocol's model (``dim`` values:
    tests only), every planned round through ``encode_update`` with ``+C u`` and ``-C u``."""
    from securefed.privacy.ddg import encode_update, rotation_seed, unrotate
    from securefed.training.client_dp import phase_name, site_plan
    from securefed.training.dpsgd import max_clusters

    protocol = loaded.protocol
    values = int(dim) if dim is not None else _model_values(protocol.training.model_dump_json())
    plan = site_plan(protocol, values)
    t = protocol.training
    rounds = [(phase_name(-1), r) for r in range(1, t.global_rounds + 1)]
    rounds += [(phase_name(c), r) for c in range(max_clusters(protocol))
               for r in range(1, t.finetune_rounds + 1)]  # fmt: skip
    if len(rounds) != plan.rounds:  # pragma: no cover - the plan counts the same rounds
        raise ConfigError(f"client-dp audit: {len(rounds)} rounds, the plan has {plan.rounds}")
    m = plan.modulus
    shifts: list[float] = []
    bases: list[float] = []
    sigmas: list[float] = []
    for phase, rnd in rounds:
        seed = rotation_seed(loaded.sha256, phase, rnd)
        unit = np.zeros(plan.padded_dim)
        unit[0] = 1.0
        u = unrotate(unit, plan, seed)  # rotate(u) = e_0: all of the update on one coordinate
        u /= np.linalg.norm(u)
        asked = _Requested()
        coords = []
        for sign in (1.0, -1.0):
            raw = encode_update(sign * 10.0 * plan.clip * u, plan, seed, asked)
            coords.append(float(np.mod(raw[0], m)) - m // 2)  # the centred integer sent
        if any(c[2] != (plan.padded_dim,) for c in asked.calls):
            raise ConfigError("client-dp audit: encode_update does not noise every value")
        shifts.append(coords[0] - coords[1])
        bases.append(coords[1])
        sigmas.extend(c[1] for c in asked.calls)
    sigma = min(sigmas)  # the share each site asks for (all equal for a correct plan)
    honest = plan.honest
    per_round_sd = math.sqrt(honest) * sigma
    head = m / 2 - max(max(abs(b), abs(b + s)) for b, s in zip(bases, shifts, strict=True))
    wraps = 2 * float(norm.sf(head / per_round_sd)) * len(rounds) if head > 0 else 1.0
    if wraps < 1e-9:  # the modular sum never wraps: the rounds add up in one component
        comps = [_Component(float(sum(shifts)), sigma, honest * len(rounds))]
    else:
        comps = [_Component(float(s), sigma, honest, m, b)
                 for s, b in zip(shifts, bases, strict=True)]  # fmt: skip

    def implied(mu: float) -> float:
        if mu <= 0:
            return 0.0
        return _planned_epsilon(plan, math.sqrt(len(rounds)) / mu)

    return _gaussian_mechanism(
        "client-dp", plan.epsilon, plan.delta, comps, _noise(loaded, "client-dp"), noise_scale,
        implied,
        f"client-level DP (distributed discrete Gaussian): {len(rounds)} round(s) of "
        f"encode_update at clip {plan.clip:g} on {values} values (padded {plan.padded_dim}), "
        f"the {honest} honest sites' shares of sigma {sigma:.0f} units, modulus {m}; the "
        f"neighbouring updates +C u / -C u (10 C u clipped) move the sum by "
        f"{np.mean(shifts):.0f} units a round "
        f"(sensitivity {plan.sensitivity:.0f}); noise multiplier {plan.noise_multiplier:.4g}",
        ("securefed.training.client_dp.site_plan", "securefed.privacy.ddg.encode_update"),
        combine=combine,
    )  # fmt: skip


def float_laplace(epsilon: float, delta: float = 0.0, noise_scale: float = 1.0) -> MechanismAudit:
    """A float64 Laplace at sensitivity 1: the pre-discrete sampler, a reference to catch."""
    scale = 1.0 / epsilon  # sensitivity 1 in float units
    noise = SecureNoise()

    def sample(which: int, n: int) -> Draws:
        y = float(which) + noise.laplace(scale * noise_scale, (n,))
        return Draws(y / scale, float_laplace_impossible(y, 0.0, scale * noise_scale))

    return MechanismAudit(
        "float-laplace", epsilon, 0.0, "laplace", 1.0 / scale, sample, lambda measured: measured,
        1, f"float64 Laplace (53-bit uniform, closed form), scale {scale:.3g} at sensitivity 1: "
        "the pre-discrete sampler, a reference the audit must catch", ("SecureNoise.laplace",),
    )  # fmt: skip


def _noise(loaded: LoadedProtocol, stage: str) -> Any:
    return noise_source_for(loaded.protocol, "audit", stage)


def _projection_dimension(loaded: LoadedProtocol) -> int:
    """The dimension of the secure clustering's points (the protocol's fixed projection)."""
    from securefed.privacy.bounds import load_pinned_bounds
    from securefed.privacy.geometry import release_geometry

    return int(release_geometry(loaded, load_pinned_bounds(loaded)).dimension)


@functools.lru_cache(maxsize=8)
def _model_values(training_json: str) -> int:
    """Values of the protocol's model as a site sends it (builds the model once per spec)."""
    from securefed.protocol.schema import TrainingSpec
    from securefed.training.client_dp import model_values

    return model_values(TrainingSpec.model_validate_json(training_json))


def _planned_epsilon(plan: Any, multiplier: float) -> float:
    from securefed.privacy.accounting import accountant_epsilon

    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(multiplier),
                                              plan.rounds)  # fmt: skip
    return accountant_epsilon([event], plan.delta, plan.accountant)


def _gaussian_implied(
    make: list[Callable[[float], Any]], delta: float, accountant: str
) -> Callable[[float], float]:
    from securefed.privacy.accounting import accountant_epsilon

    def implied(mu: float) -> float:
        if mu <= 0:
            return 0.0
        return accountant_epsilon([m(1.0 / mu) for m in make], delta, accountant)

    return implied


# -- protocols -------------------------------------------------------------------------------------
# Mechanism -> (shipped protocol, how its stage's claim is set) for the audit without RUNDIR.
_BASES: dict[str, str] = {
    "feature-gaussian": "demo-local-dp",
    "feature-laplace": "demo-local-dp",
    "clustering-shares": "demo-secure-aggregate",
    "dp-sgd": "demo-dpsgd",
    "dp-sgd-discrete": "demo-dpsgd",
    "client-dp": "demo-clientdp",
}
# The DP-SGD steps audited by the one-run audit, by their training.dp_sgd.noise source.
ONE_RUN: dict[str, str] = {"dp-sgd": "float", "dp-sgd-discrete": "discrete-gaussian"}
MECHANISMS: tuple[str, ...] = (*_BASES, "float-laplace")
DEFAULT_MECHANISMS = ("feature-gaussian", "feature-laplace", "clustering-shares", "dp-sgd",
                      "dp-sgd-discrete", "client-dp")  # fmt: skip


def claim_protocol(name: str, epsilon: float, delta: float) -> LoadedProtocol:
    """The shipped demo protocol of mechanism ``name`` with its stage claiming (``epsilon``,
    ``delta``) (the audit without RUNDIR; the budget totals raised to hold the claim)."""
    from securefed.protocol.shipped import shipped_protocol

    path = shipped_protocol(_BASES[name])
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    if name.startswith("feature-"):
        laplace = name == "feature-laplace"
        data["release"].update(epsilon=epsilon, delta=0.0 if laplace else delta,
                               mechanism="laplace" if laplace else "gaussian")  # fmt: skip
    elif name == "clustering-shares":
        data["clustering"].setdefault("secure", {}).update(epsilon=epsilon, delta=delta)
    elif name in ONE_RUN:
        spec = data["training"]["dp_sgd"]
        spec.update(epsilon=epsilon, delta=delta)
        if ONE_RUN[name] == "discrete-gaussian":  # the lattice step is accounted unamplified
            spec.update(noise="discrete-gaussian", amplification="none")
            spec.pop("population", None)
    else:
        data["training"]["client_dp"].update(epsilon=epsilon, delta=delta)
    eps_total = float(data.get("release", {}).get("epsilon") or 0.0) + epsilon
    delta_total = float(data.get("release", {}).get("delta") or 0.0) + delta
    if "secure" in data.get("clustering", {}):
        eps_total += float(data["clustering"]["secure"].get("epsilon", 1.0))
        delta_total += float(data["clustering"]["secure"].get("delta", 1e-6))
    privacy = data["privacy"]
    privacy["total_epsilon"] = max(float(privacy["total_epsilon"]), eps_total)
    privacy["total_delta"] = min(0.5, max(float(privacy.get("total_delta", 1e-5)), delta_total))
    protocol = parse_protocol(data, f"{path} (audit claim {epsilon:g}, {delta:g})")
    return LoadedProtocol(protocol, protocol_hash(protocol), path, "")


def protocol_mechanisms(loaded: LoadedProtocol) -> list[str]:
    """The DP stages ``loaded`` enables, as audit mechanisms."""
    p = loaded.protocol
    out = []
    if p.release.mode == "local-dp":
        out.append("feature-laplace" if p.release.mechanism == "laplace" else "feature-gaussian")
    if p.release.mode == "secure-aggregate":
        out.append("clustering-shares")
    if p.training.dp_sgd.enabled:
        out.append("dp-sgd-discrete" if p.training.dp_sgd.noise == "discrete-gaussian"
                   else "dp-sgd")  # fmt: skip
    if p.training.client_dp.enabled:
        out.append("client-dp")
    return out


# What `audit dp` does not exercise, said in every dp.json.
NOT_AUDITED: list[dict[str, str]] = [
    {"mechanism": "dp-sgd (the 3D segmentation model)",
     "why": "the canaries train a linear model through the plan, batch samplers and optimizer of "
     "the site; a canary audit of the 1.2 M-parameter model's own training is not run"},
    {"mechanism": "the release's surroundings",
     "why": "the audit calls the functions that fix each release's noise (plans, share sizing, "
     "encode_update) and its sampler; the ledger, sealing and transport around them are covered "
     "by the egress census and the tests, not by a DP bound"},
    {"mechanism": "a 2x violation at large epsilon, distribution-free",
     "why": "a threshold test needs about e^epsilon / TPR outputs to certify epsilon: the "
     "distribution-free bound of dp-sgd at a claim of 8 cannot reach the claim against half the "
     "noise at any affordable size (power_2x says so per row); the noise check catches it"},
]  # fmt: skip


# -- the tests -------------------------------------------------------------------------------------
def epsilon_lower_bound(
    y0: np.ndarray, y1: np.ndarray, threshold: float, delta: float, confidence: float
) -> dict[str, float]:
    """Clopper-Pearson lower bound of the test ``output >= threshold``."""
    n0 = int(np.sum(y0 >= threshold))
    n1 = int(np.sum(y1 >= threshold))
    # Bonferroni over the two rates: each one-sided at (1 - confidence) / 2, i.e. the two-sided
    # interval at level 1 - (1 - confidence).
    fpr_hi = clopper_pearson(n0, len(y0), confidence)[1]
    tpr_lo = clopper_pearson(n1, len(y1), confidence)[0]
    bound = math.log((tpr_lo - delta) / fpr_hi) if tpr_lo > delta else 0.0
    return {"threshold": threshold, "fpr_upper": fpr_hi, "tpr_lower": tpr_lo,
            "lower_bound": max(0.0, bound)}  # fmt: skip


def _noise_check(
    mech: MechanismAudit, y0: np.ndarray, y1: np.ndarray, confidence: float
) -> dict[str, Any]:
    """The measured standardised shift (Gaussian: mean difference over the pooled standard
    deviation; Laplace: median difference over the mean absolute deviation), its one-sided lower
    confidence bound, and the epsilon the plan's accounting gives at that bound."""
    n = min(len(y0), len(y1))
    z = float(norm.isf(1.0 - confidence))
    if mech.family == "gaussian":
        diff = float(np.mean(y1) - np.mean(y0))
        sd = math.sqrt((float(np.var(y0, ddof=1)) + float(np.var(y1, ddof=1))) / 2.0)
        measured = diff / sd
        se = math.sqrt(2.0 / n + measured**2 / (4.0 * n))
        lower = measured - z * se
    else:
        m0, m1 = float(np.median(y0)), float(np.median(y1))
        b = (float(np.mean(np.abs(y0 - m0))) + float(np.mean(np.abs(y1 - m1)))) / 2.0
        measured = (m1 - m0) / b
        lower = (m1 - m0 - z * b * math.sqrt(2.0 / n)) / (b * (1.0 + z / math.sqrt(2.0 * n)))
    implied = mech.implied_epsilon(max(lower, 0.0))
    return {"statistic": "shift over noise (mu)" if mech.family == "gaussian" else
            "shift over scale", "measured": measured, "lower": lower, "planned": mech.shift,
            "epsilon_implied": implied, "confidence": confidence,
            "finding": implied > mech.claimed_epsilon}  # fmt: skip


def audit_mechanism(
    mech: MechanismAudit,
    trials: int,
    confidence: float = CONFIDENCE,
    *,
    threshold: float | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Draw ``trials`` outputs at each input, bound epsilon with the threshold test (``threshold``
    in standardised units, fixed in advance; default: the best against a 2x violation at this
    size), run the float distinguisher and the noise check."""
    t0 = time.monotonic()
    if threshold is None:
        threshold, _ = dp_power.best_threshold(
            mech.family, mech.shift, trials, mech.claimed_epsilon, mech.delta, confidence
        )
    d0, d1 = mech.sample(0, trials), mech.sample(1, trials)
    test = epsilon_lower_bound(d0.statistic, d1.statistic, threshold, mech.delta, confidence)
    impossible = float(np.mean(d1.impossible_at_base))
    possible_own = float(np.mean(~d0.impossible_at_base))
    bound = math.inf if impossible > 0 and possible_own == 1.0 else test["lower_bound"]
    fpr, tpr = dp_power.threshold_rates(mech.family, mech.shift, threshold,
                                        dp_power.VIOLATION_SCALE)  # fmt: skip
    power = dp_power.threshold_power(fpr, tpr, trials, mech.claimed_epsilon, mech.delta,
                                     confidence)  # fmt: skip
    check = _noise_check(mech, d0.statistic, d1.statistic, confidence)
    best = dp_power.threshold_max_certifiable(trials, mech.delta, confidence)
    return _row(
        mech.name, mech.description, mech.claimed_epsilon, mech.delta, bound, best, power, check,
        trials, confidence, time.monotonic() - t0, quick, mech.code_path,
        threshold_test=test,
        float_distinguisher={"impossible_fraction": impossible,
                             "own_outputs_possible": possible_own},
    )  # fmt: skip


def _row(
    name: str,
    description: str,
    claimed: float,
    delta: float,
    bound: float,
    best: float,
    power: float,
    check: dict[str, Any],
    trials: int,
    confidence: float,
    seconds: float,
    quick: bool,
    code_path: tuple[str, ...],
    **extra: Any,
) -> dict[str, Any]:
    finding = bound > claimed or bool(check["finding"])
    status = "finding" if finding else ("inconclusive" if claimed >= best else "ok")
    return {
        "mechanism": name,
        "description": description,
        "claimed_epsilon": claimed,
        "delta": delta,
        "lower_bound": bound,
        "max_certifiable": best,
        "power_2x": power,
        "status": status,
        **extra,
        "noise_check": check,
        "trials": trials,
        "confidence": confidence,
        "quick": quick,
        "code_path": list(code_path),
        "seconds": round(seconds, 2),
        "finding": finding,
    }


def _dp_sgd_row(
    name: str,
    loaded: LoadedProtocol,
    *,
    noise_scale: float,
    canaries: int | None,
    quick: bool,
    confidence: float,
) -> dict[str, Any]:
    """The one-run audit (securefed.audit.one_run) of the protocol's DP-SGD plan."""
    from securefed.audit.one_run import CONFIDENCE as ONE_RUN_CONFIDENCE
    from securefed.audit.one_run import run_one_run_audit, schedule
    from securefed.training.dpsgd import plan_dpsgd

    t0 = time.monotonic()
    plan = plan_dpsgd(loaded.protocol)
    relation = loaded.protocol.privacy.neighbouring
    rates = {"all": 1.0, "poisson": plan.sampling_rate}
    model = dp_power.CanaryModel(
        tuple((steps, rates.get(how, plan.batch_size / slots)) for steps, slots, how in
              schedule(plan)), plan.noise_multiplier, relation,
    )  # fmt: skip
    if canaries is None:
        if quick:
            canaries = QUICK_CANARIES[plan.noise]
        else:
            canaries, _ = dp_power.size_one_run(model, plan.epsilon, plan.delta,
                                                most=MAX_CANARIES[plan.noise])  # fmt: skip
    res = run_one_run_audit(plan, relation=relation, canaries=canaries, noise_scale=noise_scale,
                            confidence=ONE_RUN_CONFIDENCE,
                            check_confidence=confidence)  # fmt: skip
    check = res["noise_check"]
    check["finding"] = check["epsilon_implied"] > plan.epsilon
    power = dp_power.one_run_power(model, res["canaries"], plan.epsilon, plan.delta)
    step = (
        "Opacus DPOptimizer, secure_mode"
        if plan.noise == "float"
        else "DiscreteGaussianDPOptimizer: lattice sums, OpenDP's exact discrete Gaussian"
    )
    why = (
        "Opacus draws torch floats: no replayable sampler"
        if plan.noise == "float"
        else "the released gradient sums are lattice points: no float sample to replay"
    )
    return _row(
        name,
        f"DP-SGD ({step}) as plan_dpsgd plans it: noise multiplier "
        f"{plan.noise_multiplier:.4g}, clip {plan.max_grad_norm:g}, {res['steps']} steps "
        f"({plan.sampling} sampling, batch {plan.batch_size}"
        + (f" of {plan.population} slots" if plan.sampling == "without-replacement" else "")
        + f", {relation}); one-run audit (Steinke, Nasr, Jagielski 2023) with {res['canaries']} "
        f"gradient canaries, {res['guesses']} guesses, {res['correct']} correct",
        plan.epsilon, plan.delta, res["lower_bound"], res["max_certifiable"], power, check,
        res["canaries"], ONE_RUN_CONFIDENCE, time.monotonic() - t0, quick,
        ("securefed.training.dpsgd.plan_dpsgd", "securefed.training.dpsgd.dp_batches",
         "securefed.training.dpsgd.poisson_batches",
         "opacus DPOptimizer" if plan.noise == "float" else
         "securefed.training.discrete_dpsgd.DiscreteGaussianDPOptimizer"),
        one_run={k: v for k, v in res.items() if k != "noise_check"},
        float_distinguisher={"impossible_fraction": None, "own_outputs_possible": None,
                             "why": why},
    )  # fmt: skip


def _build(name: str, loaded: LoadedProtocol | None, epsilon: float, noise_scale: float) -> Any:
    if name == "float-laplace":
        return float_laplace(epsilon, 0.0, noise_scale)
    assert loaded is not None
    if name.startswith("feature-"):
        return feature_release(loaded, noise_scale)
    if name == "clustering-shares":
        return clustering_shares(loaded, noise_scale)
    return client_dp(loaded, noise_scale)


def _trials_for(mech: MechanismAudit, confidence: float) -> dp_power.SizedTest:
    most = min(MAX_TRIALS, MAX_DRAWS // (2 * mech.draws_per_trial))
    return dp_power.size_threshold_test(mech.family, mech.shift, mech.claimed_epsilon,
                                        mech.delta, confidence, most=most)  # fmt: skip


def run_dp_audit(
    out: Path,
    *,
    mechanisms: tuple[str, ...] | None = None,
    trials: int | None = None,
    canaries: int | None = None,
    epsilon: float = 1.0,
    delta: float = 1e-5,
    noise_scale: float = 1.0,
    confidence: float = CONFIDENCE,
    quick: bool = False,
    protocol: LoadedProtocol | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Audit each mechanism; write ``out/dp.json`` and ``out/dp.png``; return the document.

    ``protocol``: audit the DP stages it enables at its claims (``mechanisms`` may name a subset);
    otherwise each mechanism's shipped demo protocol at (``epsilon``, ``delta``). ``trials`` /
    ``canaries``: the size of the threshold tests / one-run audits (default: sized to catch a 2x
    violation with 95 % probability, within a cost cap; ``quick``: 20,000 / 2,000, which
    certifies less and says so)."""
    enabled = protocol_mechanisms(protocol) if protocol is not None else None
    names = tuple(mechanisms) if mechanisms else tuple(DEFAULT_MECHANISMS if enabled is None
                                                       else enabled)  # fmt: skip
    unknown = [m for m in names if m not in MECHANISMS]
    if unknown:
        raise ConfigError(f"--mechanism {unknown[0]!r}: choose from {', '.join(MECHANISMS)}")
    if enabled is not None:
        extra = [m for m in names if m not in enabled]
        if extra:
            raise ConfigError(
                f"--mechanism {extra[0]!r}: the run's protocol does not enable it (its DP "
                f"stages: {', '.join(enabled) or 'none'})"
            )
    if trials is not None and trials < 2000:
        raise ConfigError(f"--trials {trials}: at least 2000")
    if canaries is not None and canaries < 100:
        raise ConfigError(f"--canaries {canaries}: at least 100")
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"--confidence {confidence}: must be in [0.5, 1)")
    if not 0 < noise_scale <= 1:
        raise ConfigError(f"--unsafe-noise-scale {noise_scale}: must be in (0, 1]")
    rows = []
    for name in names:
        loaded = protocol
        if loaded is None and name != "float-laplace":
            loaded = claim_protocol(name, epsilon, delta)
        if name in ONE_RUN:
            assert loaded is not None
            if progress is not None:
                progress(f"{name}: one-run DP-SGD audit of the protocol's plan")
            rows.append(_dp_sgd_row(name, loaded, noise_scale=noise_scale, canaries=canaries,
                                    quick=quick, confidence=confidence))  # fmt: skip
            continue
        t0 = time.monotonic()
        mech = _build(name, loaded, epsilon, noise_scale)
        if trials is not None or quick:
            n = trials if trials is not None else QUICK_TRIALS
            threshold = None
        else:
            sized = _trials_for(mech, confidence)
            n, threshold = sized.trials, sized.threshold
        if progress is not None:
            progress(f"{name}: {n} outputs at each of two neighbouring inputs")
        row = audit_mechanism(mech, n, confidence, threshold=threshold, quick=quick)
        row["seconds"] = round(time.monotonic() - t0, 2)
        rows.append(row)
    doc = {
        "kind": "dp-audit",
        "noise_scale": noise_scale,
        "note": _note(noise_scale, quick),
        "mode": "protocol" if protocol is not None else "claims",
        "protocol": protocol.sha256 if protocol is not None else None,
        "quick": quick,
        "power": {"violation": "half the calibrated noise standard deviation (noise_scale 0.5)",
                  "target": dp_power.TARGET_POWER},
        "not_audited": NOT_AUDITED,
        "mechanisms": rows,
        "findings": [r["mechanism"] for r in rows if r["finding"]],
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "dp.json", _json(doc))
    _plot(rows, out / "dp.png")
    return doc


def _note(noise_scale: float, quick: bool) -> str:
    notes = []
    if noise_scale < 1:
        notes.append("noise_scale < 1 under-noises every mechanism on purpose (shows the audit's "
                     "power; never a statement about securefed's releases)")  # fmt: skip
    if quick:
        notes.append("quick: fewer outputs and canaries; each row's max_certifiable and power_2x "
                     "say how much less it can certify")  # fmt: skip
    return "; ".join(notes)


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {"finding": "#c44e52", "ok": "#55a868", "inconclusive": "#999999"}
    names = [r["mechanism"] for r in rows]
    claims = [r["claimed_epsilon"] for r in rows]
    top = max(claims, default=1.0) * 3
    bounds = [min(r["lower_bound"], top) for r in rows]
    certifiable = [min(r["max_certifiable"], top) for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.2, 1.6 * len(rows)), 3.2))
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, claims, 0.4, label="claimed epsilon", color="#4c72b0")
    ax.bar(xs + 0.2, bounds, 0.4, label="empirical lower bound",
           color=[colour[r["status"]] for r in rows])  # fmt: skip
    ax.scatter(xs + 0.2, certifiable, marker="_", s=300, color="black", zorder=3,
               label="max certifiable")  # fmt: skip
    for x, r in zip(xs, rows, strict=True):
        if math.isinf(r["lower_bound"]):
            ax.text(x + 0.2, top, "inf", ha="center", va="bottom", fontsize=8)
        if r["max_certifiable"] > top:  # off the scale: its value under the marker
            best = r["max_certifiable"]
            ax.text(x + 0.2, top * 0.96, "inf" if math.isinf(best) else f"{best:.3g}",
                    ha="center", va="top", fontsize=7)  # fmt: skip
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_ylabel("epsilon")
    ax.set_title("DP audit: claim vs empirical lower bound", fontsize=9, pad=24)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
