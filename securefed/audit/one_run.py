"""The one-run DP-SGD audit of Steinke, Nasr and Jagielski (NeurIPS 2023), white-box, at small
scale, through securefed's own DP-SGD step (Opacus ``GradSampleModule`` + ``DPOptimizer`` with
``secure_mode``; the noise multiplier of ``training.dpsgd.calibrate_step_multiplier``).

``m`` canaries, each a dataset slot of a linear model with ``m`` weights: slot i holds canary i
(its per-sample gradient ``-C e_i``, included with probability 1/2) or its replacement (``+C e_i``:
the replace-one neighbour at the sensitivity 2C the accountant assumes). Every step uses the whole
dataset (no sampling: the unamplified step of ``dp_sgd.amplification = "none"``; the
amplified accounting of sampled batches is not what this audit exercises). After T steps
the score of canary i is how far weight i moved; the auditor guesses "in" for the k highest and
"out" for the k lowest scores (k fixed in advance: m / 10), counts its correct guesses ``v`` of
``r = 2k`` and converts them with the paper's Theorem: under (epsilon, delta)-DP,
P[W >= v] <= P[Binomial(r, e^eps / (1 + e^eps)) >= v] + 2 m delta * alpha. The lower bound is
the largest epsilon that this p-value rejects at 95 %.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import binom

__all__ = ["one_run_epsilon", "one_run_p_value", "run_one_run_audit"]


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ``v`` correct guesses of ``r`` under (epsilon, delta)-DP (the paper's
    Theorem 3.1/Proposition 5.2, with ``m`` canaries each included with probability 1/2)."""
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    alpha, acc = 0.0, 0.0
    for i in range(1, v + 1):
        acc += float(binom.pmf(v - i, r, q))
        alpha = max(alpha, acc / i)
    return min(1.0, tail + 2.0 * m * delta * alpha)


def one_run_epsilon(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon rejected at ``confidence`` (0 when none is)."""
    p = 1.0 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) >= p:
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


def run_one_run_audit(
    epsilon: float,
    delta: float,
    *,
    canaries: int = 2000,
    steps: int = 10,
    noise_scale: float = 1.0,
    accountant: str = "rdp",
    seed: int | None = None,
    noise: str = "float",
) -> dict[str, Any]:
    """Train the canary model with securefed's DP-SGD step and audit it. ``noise``: the step's
    noise source, as ``training.dp_sgd.noise`` (``float``: Opacus's ``DPOptimizer``;
    ``discrete-gaussian``: securefed's lattice optimizer with OpenDP's exact sampler)."""
    import os

    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from securefed.training.dpsgd import calibrate_step_multiplier

    multiplier = calibrate_step_multiplier(epsilon, delta, steps, accountant) * noise_scale
    clip = 1.0
    secret = seed if seed is not None else int.from_bytes(os.urandom(8), "big") >> 1
    rng = np.random.default_rng(secret)
    included = rng.random(canaries) < 0.5
    sign = np.where(included, 1.0, -1.0)  # in: x = C e_i (gradient -C e_i); out: x = -C e_i
    x = torch.diag(torch.tensor(sign * clip, dtype=torch.float32))
    model = torch.nn.Linear(canaries, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    gsm = GradSampleModule(model)
    gen = torch.Generator().manual_seed(secret + 1)
    base = torch.optim.SGD(gsm.parameters(), lr=1.0)
    opt: DPOptimizer
    if noise == "discrete-gaussian":
        from securefed.privacy.noise import SecureNoise
        from securefed.training.discrete_dpsgd import DiscreteGaussianDPOptimizer

        # Mean reduction divides every weight's move by the same public batch size: the
        # ranking of the canaries, all the audit reads, is unchanged.
        opt = DiscreteGaussianDPOptimizer(base, noise_multiplier=multiplier, max_grad_norm=clip,
                                          expected_batch_size=canaries, noise=SecureNoise(),
                                          rounding_seed=secret + 2)  # fmt: skip
    elif noise == "float":
        opt = DPOptimizer(base, noise_multiplier=multiplier, max_grad_norm=clip,
                          expected_batch_size=canaries, loss_reduction="sum", generator=gen,
                          secure_mode=True)  # fmt: skip
    else:
        raise ValueError(f"noise {noise!r}: 'float' or 'discrete-gaussian'")
    try:
        for _ in range(steps):
            opt.zero_grad()
            loss = -gsm(x).sum()  # per-sample gradient -x_i
            loss.backward()
            opt.step()
    finally:
        gsm._close()
    score = model.weight.detach().numpy().ravel()  # moved by +C per step when in
    k = canaries // 10
    order = np.argsort(score)
    guess_in, guess_out = order[-k:], order[:k]
    v = int(included[guess_in].sum() + (~included[guess_out]).sum())
    r = 2 * k
    bound = one_run_epsilon(canaries, r, v, delta)
    return {"noise_multiplier": multiplier, "canaries": canaries, "steps": steps, "noise": noise,
            "guesses": r, "correct": v, "lower_bound": bound}  # fmt: skip
