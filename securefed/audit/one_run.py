"""The one-run DP-SGD audit of Steinke, Nasr and Jagielski (NeurIPS 2023), white-box, through
securefed's own DP-SGD step and plan: the noise multiplier, clip, step count and batch sampling
of ``securefed.training.dpsgd.plan_dpsgd(protocol)`` (a function of the protocol's public values
alone), the site's batch samplers (``dp_batches`` / ``poisson_batches``), and the step's optimizer
(Opacus ``DPOptimizer`` with ``secure_mode`` for ``dp_sgd.noise = "float"``, securefed's
``DiscreteGaussianDPOptimizer`` with OpenDP's exact sampler for ``"discrete-gaussian"``).

``m`` canaries, each a slot of a linear model with ``m`` weights: slot i holds canary i (its
per-sample gradient ``-10 C e_i``, which the step clips to ``-C e_i``; included with probability
1/2) or its neighbour: under replace-one the replacement ``+10 C e_i`` (after clipping the change
of 2C the accountant assumes), under add-remove-one nothing. The canaries are grouped into
simulated sites whose batches the site's own sampler draws: under replace-one with ``amplification
= "sampling"``, ``batch_size`` of the plan's ``population`` patient slots per step (a site of
exactly ``population`` canaries); under add-remove-one, Poisson at the plan's ``sampling_rate``;
unamplified steps (``none``, and the finetuning rounds the plan charges unamplified) draw every
canary at every step (a site of at most ``batch_size`` patients, the case the unamplified charge
covers). Every planned step of the study runs: ``global_rounds`` then the finetuning rounds of
every cluster, each ``steps_per_round``. The canaries' weights are disjoint, so they run in chunks
of ``CHUNK`` (one optimizer per chunk; each chunk is one DP-SGD run over its canaries, and the
union is one run over all of them).

After the run the score of canary i is how far weight i moved; the auditor guesses "in" for the k
highest and "out" for the k lowest scores (k fixed in advance: m / 10), counts its correct guesses
``v`` of ``r = 2k`` and converts them with the paper's Theorem: under (epsilon, delta)-DP,
P[W >= v] <= P[Binomial(r, e^eps / (1 + e^eps)) >= v] + 2 m delta * alpha. The lower bound is the
largest epsilon that this p-value rejects at 95 %. The most the run can certify is that bound with
every guess right (:func:`one_run_max_certifiable`).

The noise check reads the same run through the plan's accounting: the weights move by ``c`` per
drawn step (the canary's clipped contribution, ``C`` for a correct clip) plus noise of ``sigma``
per step. A regression of the scores on the known draw counts measures both (one-sided
confidence bounds); the plan's own events at the multiplier ``sigma / max(C, c)`` give the
epsilon it implies: above the claim when the noise is below the plan's or the contribution above
the clip (valid for Gaussian noise, which both noise sources are designed to add).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import binom, chi2, norm

if TYPE_CHECKING:
    from securefed.training.dpsgd import DPSGDPlan

__all__ = [
    "CHUNK",
    "guesses_for",
    "one_run_epsilon",
    "one_run_max_certifiable",
    "one_run_p_value",
    "run_one_run_audit",
    "schedule",
]

CHUNK = 1000  # canaries per optimizer (the per-sample gradients of a chunk are CHUNK x CHUNK)
CONFIDENCE = 0.95


def guesses_for(canaries: int) -> int:
    """The guesses r of a run with ``canaries`` canaries: k = m // 10 on each side."""
    return 2 * (int(canaries) // 10)


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ``v`` correct guesses of ``r`` under (epsilon, delta)-DP (the paper's
    Theorem 3.1/Proposition 5.2, with ``m`` canaries each included with probability 1/2)."""
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    if v < 1:
        return min(1.0, tail)
    i = np.arange(1, v + 1)
    acc = np.cumsum(binom.pmf(v - i, r, q))  # sum_{j <= i} P[Binomial = v - j]
    alpha = float(np.max(acc / i))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def one_run_epsilon(m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest epsilon rejected at ``confidence`` (0 when none is)."""
    p = 1.0 - confidence
    if r < 1 or one_run_p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < p:
        hi *= 2.0
        if hi > 64:
            return math.inf
    for _ in range(40):
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


def one_run_max_certifiable(canaries: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest bound a run of ``canaries`` canaries can give: every guess right."""
    r = guesses_for(canaries)
    return one_run_epsilon(canaries, r, r, delta, confidence)


def schedule(plan: DPSGDPlan) -> list[tuple[int, int, str]]:
    """The planned steps as phases ``(steps, slots per simulated site, sampling)``: the global
    rounds over the plan's population, then the finetuning rounds (unamplified under
    without-replacement sampling, still Poisson-sampled under add-remove-one)."""
    per_round = plan.steps_per_round
    glob = plan.global_rounds * per_round
    fine = (plan.rounds - plan.global_rounds) * per_round
    if plan.sampling == "poisson":
        phases = [(glob + fine, CHUNK, "poisson")]
    elif plan.sampling == "without-replacement":
        phases = [(glob, max(plan.population, plan.batch_size), "without-replacement"),
                  (fine, plan.batch_size, "all")]  # fmt: skip
    else:
        phases = [(glob + fine, plan.batch_size, "all")]
    return [p for p in phases if p[0] > 0]


def _draws(plan: DPSGDPlan, canaries: int, secret: np.random.Generator) -> list[np.ndarray]:
    """Per planned step, the canaries drawn into the batch, by the site's own samplers."""
    from securefed.training.dpsgd import dp_batches, poisson_batches

    out: list[np.ndarray] = []
    for steps, slots, how in schedule(plan):
        if how == "all" or (how == "without-replacement" and plan.batch_size >= slots):
            out += [np.arange(canaries)] * steps
            continue
        per_step: list[list[int]] = [[] for _ in range(steps)]
        for start in range(0, canaries, slots):
            n = min(slots, canaries - start)
            seed = int(secret.integers(0, 2**62))
            if how == "poisson":
                batches = poisson_batches(n, plan.sampling_rate, steps, seed)
            else:
                batches = dp_batches(n, plan.batch_size, steps, seed, population=slots)
            for t, b in enumerate(batches):
                per_step[t].extend(start + i for i in b)
        out += [np.asarray(sorted(s), dtype=np.int64) for s in per_step]
    return out


def run_one_run_audit(
    plan: DPSGDPlan,
    *,
    relation: str,
    canaries: int,
    noise_scale: float = 1.0,
    seed: int | None = None,
    confidence: float = CONFIDENCE,
    check_confidence: float = 0.999,
) -> dict[str, Any]:
    """Train ``canaries`` canaries through the plan's every step and audit them. ``relation``:
    the protocol's neighbouring relation (``replace-one`` or ``add-remove-one``);
    ``noise_scale`` < 1 under-noises on purpose (the audit's power); ``confidence``: of the
    one-run bound (the paper's 95 %); ``check_confidence``: of the noise check."""
    import torch

    if relation not in ("replace-one", "add-remove-one"):
        raise ValueError(f"neighbouring relation {relation!r}")
    if plan.sampling == "without-replacement":  # whole simulated sites of `population` slots
        slots = max(plan.population, plan.batch_size)
        canaries = -(-int(canaries) // slots) * slots
    multiplier = plan.noise_multiplier * noise_scale
    clip = plan.max_grad_norm
    secret = seed if seed is not None else int.from_bytes(os.urandom(8), "big") >> 1
    rng = np.random.default_rng(secret)
    included = rng.random(canaries) < 0.5
    # In: x = 10 C e_i (gradient -10 C e_i, clipped to C: the weight moves +C); out: -10 C e_i
    # (replace-one) or 0. Ten times the clip: the step must clip, or the moves show it.
    out_sign = -1.0 if relation == "replace-one" else 0.0
    sign = np.where(included, 1.0, out_sign)
    draws = _draws(plan, canaries, rng)
    weights = np.zeros(canaries)
    drawn = np.zeros(canaries)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small dense steps: one thread is faster than two contending
    try:
        _train(plan, draws, sign, multiplier, secret, weights, drawn)
    finally:
        torch.set_num_threads(threads)
    k = guesses_for(canaries) // 2
    order = np.argsort(weights)
    guess_in, guess_out = order[len(order) - k :], order[:k]
    v = int(included[guess_in].sum() + (~included[guess_out]).sum())
    r = 2 * k
    bound = one_run_epsilon(canaries, r, v, plan.delta, confidence)
    return {
        "noise_multiplier": multiplier,
        "canaries": canaries,
        "steps": len(draws),
        "noise": plan.noise,
        "sampling": plan.sampling,
        "relation": relation,
        "guesses": r,
        "correct": v,
        "lower_bound": bound,
        "max_certifiable": one_run_max_certifiable(canaries, plan.delta, confidence),
        "noise_check": _noise_check(
            plan, weights / clip, sign * drawn, len(draws), check_confidence
        ),  # fmt: skip
    }


def _train(
    plan: DPSGDPlan,
    draws: list[np.ndarray],
    sign: np.ndarray,
    multiplier: float,
    secret: int,
    weights: np.ndarray,
    drawn: np.ndarray,
) -> None:
    """Every planned step on the canaries, chunk by chunk (their weights are disjoint): the
    final weights into ``weights``, the steps each canary was drawn in into ``drawn``."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from securefed.privacy.noise import SecureNoise
    from securefed.training.discrete_dpsgd import DiscreteGaussianDPOptimizer

    canaries, clip = len(sign), plan.max_grad_norm
    for start in range(0, canaries, CHUNK):
        stop = min(start + CHUNK, canaries)
        c = stop - start
        x = torch.diag(torch.tensor(sign[start:stop] * 10.0 * clip, dtype=torch.float32))
        model = torch.nn.Linear(c, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        gsm = GradSampleModule(model)
        base = torch.optim.SGD(gsm.parameters(), lr=1.0)
        opt: DPOptimizer
        if plan.noise == "discrete-gaussian":
            # Mean reduction over a public batch size of 1: the released sum itself.
            opt = DiscreteGaussianDPOptimizer(base, noise_multiplier=multiplier,
                                              max_grad_norm=clip, expected_batch_size=1,
                                              noise=SecureNoise(),
                                              rounding_seed=secret + start + 2)  # fmt: skip
        else:
            gen = torch.Generator().manual_seed(secret + start + 1)
            opt = DPOptimizer(base, noise_multiplier=multiplier, max_grad_norm=clip,
                              expected_batch_size=1, loss_reduction="sum", generator=gen,
                              secure_mode=True)  # fmt: skip
        try:
            for batch in draws:
                lo, hi = np.searchsorted(batch, (start, stop))  # batches are sorted
                rows = batch[lo:hi] - start
                drawn[start + rows] += 1
                opt.zero_grad()
                loss = -gsm(x[torch.from_numpy(rows)]).sum()  # per-sample gradient -x_i
                loss.backward()
                opt.step()
        finally:
            gsm._close()
        weights[start:stop] = model.weight.detach().numpy().ravel().astype(np.float64)


def _noise_check(
    plan: DPSGDPlan, score: np.ndarray, signal: np.ndarray, steps: int, confidence: float
) -> dict[str, Any]:
    """The noise and the contribution measured in the canaries' moves (units of C): the noise
    per step (the residual standard deviation of the scores regressed on the known signal, the
    signed draw counts, over the square root of the steps; its upper confidence bound by
    chi-square) is the measured multiplier; the move per drawn step (the regression slope, at
    most 1: the canaries' gradients are 10 C, clipping must bring them to C) checks the clip.
    The epsilon implied is the plan's own events at the upper multiplier over the larger of 1
    and the slope's lower bound: more than the claim when the noise is below the plan or the
    contribution above the clip."""
    from securefed.training.dpsgd import DPSGDPlan

    a = (1.0 - confidence) / 2.0  # Bonferroni over the two estimates
    ss = float(np.dot(signal, signal))
    slope = float(np.dot(signal, score) / ss) if ss > 0 else 0.0
    resid = score - slope * signal
    dof = len(score) - 1
    sigma = float(np.sqrt(np.dot(resid, resid) / dof))  # noise over the whole run
    sigma_hi = sigma * math.sqrt(dof / float(chi2.ppf(a, dof)))
    slope_lo = slope - float(norm.isf(a)) * sigma / math.sqrt(ss) if ss > 0 else 0.0
    per_step = sigma / math.sqrt(steps)
    upper = sigma_hi / math.sqrt(steps) / max(1.0, slope_lo)
    at = DPSGDPlan(**{**plan.to_json(), "noise_multiplier": upper})
    return {"statistic": "noise multiplier", "measured": per_step, "upper": upper,
            "planned": plan.noise_multiplier, "move_per_step": slope,
            "move_per_step_lower": slope_lo, "epsilon_implied": float(at.planned_epsilon()),
            "confidence": confidence}  # fmt: skip
