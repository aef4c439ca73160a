"""DP-SGD with exact discrete Gaussian noise (protocol ``training.dp_sgd.noise =
"discrete-gaussian"``).

Opacus's ``DPOptimizer`` draws its Gaussian noise in floating point, where the low-order bits of
a released value can tell neighbouring inputs apart (Mironov 2012); its ``secure_mode`` makes the
attack harder but proves nothing. :class:`DiscreteGaussianDPOptimizer` keeps Opacus's step
structure (per-sample gradients, scaling by the public batch size, the wrapped optimiser) and
replaces the clipped sum and its noise by their lattice versions:

1. each per-sample gradient, flattened over the model, is clipped to L2 norm C (exactly, in
   float64), scaled to the grid gamma = C / 2^GRID_BITS and randomly rounded to integers,
   conditionally on the rounded norm being at most B = ``rounded_l2_bound(C / gamma, d, BETA)``
   (Kairouz, Liu and Steinke 2021, Theorem 2; checked on the integers, so B bounds every
   per-sample contribution, whatever the rounding draws);
2. the integer sum gets N_Z(0, (m B)^2) per value from OpenDP's exact sampler (Canonne, Kamath
   and Steinke 2020), m the plan's noise multiplier;
3. the noised integers times gamma are the step's gradient sum: dividing by the batch size and the
   optimiser's update are post-processing of an exact grid value.

Privacy of one step: replacing one patient changes the integer sum by an integer vector of L2 norm
at most 2B; a product of discrete Gaussians has the Renyi divergences of the continuous Gaussian
at integer shifts (CKS 2020), so the step is ``GaussianDpEvent(m B / 2B) = GaussianDpEvent(m /
2)``: the event the plan charges (``tests/training/test_discrete_dpsgd.py``). Amplification by
sampling is not claimed for this noise (the subsampled discrete Gaussian's RDP is not proven to be
the continuous one's), so the protocol allows it with ``amplification = "none"`` only.

Cost: OpenDP draws a few tens of thousands of values per second per core, so a step of the
1.19 M-parameter DP UNet spends tens of seconds on noise (benchmarks/results/dpsgd.md).
What leaves the site is unchanged: the model weights (masked under SecAgg+).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from securefed.errors import PrivacyError
from securefed.privacy.ddg import conditional_round, rounded_l2_bound
from securefed.privacy.noise import NoiseSource

__all__ = ["BETA", "GRID_BITS", "DiscreteGaussianDPOptimizer", "LatticeStep", "lattice_step"]

GRID_BITS = 14
"""C is 2^14 grid units: the rounding inflates the sensitivity by under 0.1 % at 1.2 M values."""
BETA = 1e-9
"""Conditional rounding's tail probability in the bound (a redraw, never a privacy failure)."""


@dataclass(frozen=True)
class LatticeStep:
    """The lattice of one DP-SGD step (every value public)."""

    clip: float  # C, model units
    dim: int  # trainable values
    gamma: float  # one grid unit in model units
    bound: float  # B: L2 bound of one rounded per-sample gradient, grid units
    sigma_units: float  # discrete Gaussian standard deviation, grid units

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise in model units (m B gamma, a little above m C)."""
        return self.sigma_units * self.gamma


def lattice_step(clip: float, dim: int, noise_multiplier: float) -> LatticeStep:
    """The grid, the rounded-norm bound B and the noise m B of a step over ``dim`` values."""
    if clip <= 0 or dim < 1 or noise_multiplier <= 0:
        raise PrivacyError(
            f"discrete DP-SGD: clip {clip}, {dim} values, noise multiplier {noise_multiplier}"
        )
    units = float(2**GRID_BITS)
    bound = rounded_l2_bound(units, int(dim), BETA)
    return LatticeStep(
        float(clip), int(dim), float(clip) / units, bound, float(noise_multiplier) * bound
    )


class DiscreteGaussianDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer with the clipped sum rounded to a lattice and exact discrete Gaussian
    noise (see the module docstring). ``noise``: the site's source (OpenDP's exact sampler; the
    seeded one of simulation protocols with ``unsafe_seeded_noise`` is not private).
    ``rounding_seed``: seeds the random rounding (site-local; the DP rests on the norm bound, not
    on it)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        noise: NoiseSource,
        rounding_seed: int | None = None,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        self.lattice = lattice_step(
            max_grad_norm, sum(int(p.numel()) for p in self.params), noise_multiplier
        )
        self._noise = noise
        seed = rounding_seed if rounding_seed is not None else int.from_bytes(os.urandom(16), "big")
        self._rounding = np.random.default_rng(seed)
        self._integer_sum: np.ndarray | None = None

    def clip_and_accumulate(self) -> None:
        """Clip each per-sample gradient to C, round it onto the lattice within B, sum."""
        lat = self.lattice
        samples = self.grad_samples
        n = len(samples[0])
        total = np.zeros(lat.dim, dtype=np.int64)
        if n:
            for p in self.params:
                _check_processed_flag(p.grad_sample)
            flat = torch.cat([g.reshape(n, -1).to(torch.float64) for g in samples], dim=1)
            rows = flat.detach().cpu().numpy()
            for row in rows:
                if not np.all(np.isfinite(row)):
                    raise PrivacyError("discrete DP-SGD: a per-sample gradient holds NaN or inf")
                norm = float(np.sqrt(np.dot(row, row)))
                scale = min(1.0, lat.clip / norm) if norm > 0 else 1.0
                total += conditional_round(row * (scale / lat.gamma), lat.bound, self._rounding)
        for p in self.params:
            _mark_as_processed(p.grad_sample)
        self._integer_sum = total

    def add_noise(self) -> None:
        """The integer sum plus N_Z(0, (m B)^2) per value, times gamma, as each ``p.grad``."""
        if self._integer_sum is None:  # pragma: no cover - Opacus calls clip_and_accumulate first
            raise PrivacyError("discrete DP-SGD: noise asked for before the clipped sum")
        lat = self.lattice
        noise = np.asarray(self._noise.discrete_gaussian(lat.sigma_units, (lat.dim,)), np.int64)
        released = (self._integer_sum + noise).astype(np.float64) * lat.gamma
        self._integer_sum = None
        offset = 0
        for p in self.params:
            k = int(p.numel())
            chunk = torch.from_numpy(released[offset : offset + k].copy())
            p.grad = chunk.view_as(p).to(dtype=p.dtype, device=p.device)
            offset += k

    def summary(self) -> dict[str, Any]:
        """The step's public lattice values (for the round's log and the report)."""
        lat = self.lattice
        return {"grid": lat.gamma, "rounded_bound": lat.bound, "noise_std": lat.noise_std}
