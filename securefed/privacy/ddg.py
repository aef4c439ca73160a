"""Client-level DP under secure aggregation: the distributed discrete Gaussian (DDG) mechanism of
Kairouz, Liu and Steinke (ICML 2021), with the collusion setting of the secure clustering.

Each round a site sends, inside Flower's SecAgg+ (which opens only the sum over the sites):

1. its model update (new weights minus the round's start model), flattened and clipped to L2
   norm ``clip`` (C);
2. randomly rotated: per block of ``block`` values, random signs then a Walsh-Hadamard transform
   (orthogonal, so the norm is kept; the signs come from a public seed of the protocol hash, phase
   and round, so the server can undo the rotation of the sum);
3. scaled by 1 / ``gamma`` and randomly rounded to integers, conditionally: the rounding is drawn
   again until the rounded vector's norm is at most ``l2_bound`` (Kairouz et al., Theorem 2 with
   ``beta``), so the sensitivity holds for every vector sent;
4. plus the site's share of discrete Gaussian noise N_Z(0, s^2) per value (OpenDP's exact
   sampler), with s sized so that the shares of the ``honest`` sites alone (the fewest sites of
   any accepted aggregate minus those that may collude with the server) give the aggregate its
   noise;
5. reduced modulo ``modulus`` (m, a power of two): the server recovers the sum modulo m, which is
   post-processing of the DDG sum.

Privacy of one round, per site: Proposition 14 of Kairouz et al. (arXiv 2102.06387) bounds the
Renyi divergence of the sum of n discrete Gaussians shifted by a vector of L2 norm D by
``alpha/2 (D / (sqrt(n) s) + sqrt(d) tau)^2``, tau = 10 sum_{k<n} exp(-2 pi^2 s^2 k / (k + 1)):
the RDP of a Gaussian mechanism with noise multiplier ``1 / (D / (sqrt(n) s) + sqrt(d) tau)``,
which is the event charged (:meth:`ClientDPPlan.round_event`). D is ``2 l2_bound`` under every
patient-level neighbouring relation: replacing, adding or removing one patient may move the
clipped update anywhere in the ball of radius ``l2_bound`` (from +C to -C), so the sum moves by
up to twice the bound (``tests/privacy/test_ddg_sensitivity.py`` builds such a pair); the same
bound protects the site's whole dataset (site-level DP).

What leaves a site: ``((x + noise) mod m) - m/2`` for the integer vector x above, masked by
SecAgg+; nothing else about the update.
Tests: ``tests/privacy/test_ddg.py``.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import dp_accounting
import numpy as np

from securefed.errors import CalibrationError, PrivacyError
from securefed.privacy.accounting import accountant_epsilon, make_accountant
from securefed.privacy.calibration import calibrate_noise_multiplier
from securefed.privacy.noise import NoiseSource, distributed_discrete_tau

__all__ = [
    "MAX_BLOCK",
    "ClientDPPlan",
    "block_size",
    "conditional_round",
    "decode_sum",
    "encode_update",
    "flatten",
    "padded_dim",
    "plan_client_dp",
    "rotate",
    "rotation_seed",
    "rounded_l2_bound",
    "unflatten",
    "unrotate",
]

MAX_BLOCK = 2**16
"""Largest Walsh-Hadamard block (the model is padded to a multiple of it: under 6 % for 1.2 M)."""
_K_STDDEVS = 4.0  # head room of the modular sum, in standard deviations of the aggregate noise
_MAX_ROUNDING_TRIES = 200


def block_size(dim: int) -> int:
    """The rotation block for ``dim`` values: the next power of two, at most ``MAX_BLOCK``."""
    if dim < 1:
        raise PrivacyError(f"client-level DP: a model of {dim} values")
    return min(MAX_BLOCK, 1 << (int(dim) - 1).bit_length())


def padded_dim(dim: int) -> int:
    """``dim`` padded with zeros to a multiple of its rotation block."""
    b = block_size(dim)
    return -(-int(dim) // b) * b


def rounded_l2_bound(norm: float, dim: int, beta: float) -> float:
    """Norm bound of a randomly rounded vector of norm <= ``norm`` in ``dim`` values (Kairouz et
    al. 2021, Theorem 2): ``norm + sqrt(dim)`` always; with conditional rounding at ``beta`` > 0
    ``sqrt(norm^2 + dim/4 + sqrt(2 ln(1/beta)) (norm + sqrt(dim)/2))`` when smaller."""
    always = norm + math.sqrt(dim)
    if beta <= 0:
        return always
    conditional = math.sqrt(
        norm**2 + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (norm + math.sqrt(dim) / 2)
    )
    return min(always, conditional)


@dataclass(frozen=True)
class ClientDPPlan:
    """One site's client-level DP setting for the whole study (every value public)."""

    clip: float  # L2 bound C of a site's update per round
    dim: int  # model values
    padded_dim: int
    block: int
    modulus: int  # the sum is taken modulo this power of two
    n_max: int  # most sites of an aggregate (head room of the modular sum)
    honest: int  # fewest honest sites' shares in any accepted aggregate
    beta: float
    gamma: float  # granularity: one integer unit is gamma in model units
    sigma_units: float  # each site's discrete Gaussian standard deviation, in integer units
    l2_bound: float  # norm bound of a rounded update, integer units
    sensitivity: float  # L2 change of the sum between neighbours, integer units
    tau: float
    noise_multiplier: float  # of the Gaussian mechanism whose RDP bounds one round
    rounds: int
    epsilon: float
    delta: float
    accountant: str

    def round_event(self) -> dp_accounting.DpEvent:
        """One round of this site (Proposition 14 of Kairouz et al., see the module docstring)."""
        return dp_accounting.GaussianDpEvent(self.noise_multiplier)

    def planned_events(self) -> list[dp_accounting.DpEvent]:
        return [dp_accounting.SelfComposedDpEvent(self.round_event(), self.rounds)]

    def planned_epsilon(self) -> float:
        return accountant_epsilon(self.planned_events(), self.delta, self.accountant)

    @property
    def aggregate_noise_std(self) -> float:
        """Standard deviation of the honest sites' noise on the sum, in model units."""
        return math.sqrt(self.honest) * self.sigma_units * self.gamma

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _multiplier(
    sensitivity: float, sigma_units: float, honest: int, dim: int
) -> tuple[float, float]:
    tau = distributed_discrete_tau(sigma_units, honest)
    scale = sensitivity / (math.sqrt(honest) * sigma_units) + math.sqrt(dim) * tau
    return 1.0 / scale, tau


def plan_client_dp(
    *,
    epsilon: float,
    delta: float,
    rounds: int,
    clip: float,
    dim: int,
    modulus: int,
    n_max: int,
    honest: int,
    beta: float,
    accountant: str,
) -> ClientDPPlan:
    """Calibrate the shares: the smallest Gaussian noise multiplier z for ``rounds`` rounds
    within (``epsilon``, ``delta``) by ``accountant``, then the granularity gamma (the aggregate
    of ``n_max`` sites fits the modulus with 4 standard deviations of head room) and each site's
    discrete Gaussian s so that the charged round event has a multiplier >= z."""
    if modulus < 2**8 or modulus & (modulus - 1):
        raise CalibrationError(f"client-level DP: the modulus {modulus} is not a power of two")
    if not 1 <= honest <= n_max:
        raise CalibrationError(f"client-level DP: {honest} honest sites of at most {n_max}")
    if rounds < 1 or clip <= 0:
        raise CalibrationError(f"client-level DP: {rounds} rounds, clip {clip}")

    def event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), int(rounds))

    z = calibrate_noise_multiplier(epsilon, delta, event, lambda: make_accountant(accountant))
    d = padded_dim(dim)
    block = block_size(dim)
    factor = 2.0  # one patient added, removed or replaced may flip a clipped update: 2 l2_bound
    inflation = 1.0
    for _ in range(100):
        sigma_real = z * factor * clip * inflation / math.sqrt(honest)
        headroom = _K_STDDEVS * (math.sqrt(n_max) * sigma_real + n_max * clip / math.sqrt(block))
        gamma = 2.0 * headroom / modulus
        c_units = clip / gamma
        bound = rounded_l2_bound(c_units, d, beta)
        if bound / c_units <= inflation * (1 + 1e-9):
            break
        inflation = bound / c_units
        if inflation > 1e3:
            break
    else:  # pragma: no cover - converges or diverges well before
        inflation = math.inf
    if not math.isfinite(inflation) or inflation > 1e3:
        raise CalibrationError(
            f"client-level DP: the noise for epsilon {epsilon:g} over {rounds} rounds does not fit "
            f"a modulus of {modulus} for {n_max} sites of {d} values (the rounding error would "
            "dominate); raise secure_aggregation.quantization_range or the training epsilon"
        )
    sigma_units = sigma_real / gamma
    sensitivity = factor * bound
    mult, tau = _multiplier(sensitivity, sigma_units, honest, d)
    for _ in range(1000):
        if mult >= z:
            break
        sigma_units *= 1.0001
        mult, tau = _multiplier(sensitivity, sigma_units, honest, d)
    plan = ClientDPPlan(
        clip=float(clip), dim=int(dim), padded_dim=d, block=block, modulus=int(modulus),
        n_max=int(n_max), honest=int(honest), beta=float(beta), gamma=gamma,
        sigma_units=sigma_units, l2_bound=bound, sensitivity=sensitivity, tau=tau,
        noise_multiplier=mult, rounds=int(rounds), epsilon=float(epsilon), delta=float(delta),
        accountant=accountant,
    )  # fmt: skip
    if plan.planned_epsilon() > epsilon * (1 + 1e-9):  # pragma: no cover - mult >= z
        raise CalibrationError(f"client-level DP: the plan exceeds epsilon {epsilon:g}")
    return plan


# -- encoding --------------------------------------------------------------------------------------
def rotation_seed(protocol_hash: str, phase: str, server_round: int) -> int:
    """The public seed of one round's rotation signs (same at every site and the server)."""
    tag = f"securefed/client-dp/rotation/{protocol_hash}/{phase}/{int(server_round)}".encode()
    return int.from_bytes(hashlib.sha256(tag).digest()[:8], "big")


def _signs(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, size=n, dtype=np.int8).astype(np.float64) * 2.0 - 1.0


def _hadamard(x: np.ndarray) -> np.ndarray:
    """Walsh-Hadamard transform of each row of ``x`` (rows of a power-of-two length),
    normalised (orthogonal and its own inverse)."""
    rows, n = x.shape
    y = x.copy()
    h = 1
    while h < n:
        y = y.reshape(rows, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = np.stack((a + b, a - b), axis=2).reshape(rows, n)
        h *= 2
    return y / math.sqrt(n)


def rotate(vector: np.ndarray, plan: ClientDPPlan, seed: int) -> np.ndarray:
    """Pad to ``plan.padded_dim``, flip signs, Walsh-Hadamard per block (norm kept)."""
    x = np.zeros(plan.padded_dim, dtype=np.float64)
    x[: vector.size] = vector
    x *= _signs(seed, plan.padded_dim)
    return _hadamard(x.reshape(-1, plan.block)).reshape(-1)


def unrotate(vector: np.ndarray, plan: ClientDPPlan, seed: int) -> np.ndarray:
    """Inverse of :func:`rotate`: the first ``plan.dim`` values."""
    x = _hadamard(np.asarray(vector, dtype=np.float64).reshape(-1, plan.block)).reshape(-1)
    return (x * _signs(seed, plan.padded_dim))[: plan.dim]


def conditional_round(
    scaled: np.ndarray, bound: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Unbiased random rounding of ``scaled`` to integers, drawn again until the result's L2
    norm is at most ``bound`` (so every vector sent meets the sensitivity). The rounding's
    randomness is site-local (os.urandom seed); the DP rests on the norm bound, not on it."""
    rng = rng or np.random.default_rng(int.from_bytes(os.urandom(16), "big"))
    floor = np.floor(scaled)
    frac = scaled - floor
    for _ in range(_MAX_ROUNDING_TRIES):
        out = floor + (rng.random(scaled.shape) < frac)
        if float(np.sqrt(np.dot(out, out))) <= bound:
            return out.astype(np.int64)
    raise PrivacyError(
        f"client-level DP: no rounding within the norm bound {bound:.6g} in "
        f"{_MAX_ROUNDING_TRIES} tries; nothing is sent"
    )


def flatten(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])


def unflatten(vector: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, i = [], 0
    for a in like:
        n = int(np.asarray(a).size)
        out.append(vector[i : i + n].reshape(np.asarray(a).shape).astype(np.asarray(a).dtype))
        i += n
    if i != vector.size:
        raise PrivacyError(f"client-level DP: {vector.size} values for a model of {i}")
    return out


def encode_update(
    update: np.ndarray,
    plan: ClientDPPlan,
    seed: int,
    noise: NoiseSource,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The vector a site hands to SecAgg+: ``((round(rotate(clip(update)) / gamma) + N_Z) mod m)
    - m/2`` as float64 integers in [-m/2, m/2) (Flower's quantisation, with clipping range m/2
    and quantisation range m, maps them to ``value mod m`` exactly). Call only after the round is
    charged to the ledger."""
    u = np.asarray(update, dtype=np.float64).reshape(-1)
    if u.size != plan.dim:
        raise PrivacyError(
            f"client-level DP: an update of {u.size} values for a plan of {plan.dim}"
        )
    if not np.all(np.isfinite(u)):
        raise PrivacyError("client-level DP: the update holds NaN or inf; nothing is sent")
    norm = float(np.sqrt(np.dot(u, u)))
    if norm > plan.clip:
        u = u * (plan.clip / norm)
    x = conditional_round(rotate(u, plan, seed) / plan.gamma, plan.l2_bound, rng)
    z = x + np.asarray(noise.discrete_gaussian(plan.sigma_units, (plan.padded_dim,)), np.int64)
    m = plan.modulus
    return (np.mod(z, m) - m // 2).astype(np.float64)


def decode_sum(
    aggregate_mean: np.ndarray, n_sites: int, plan: ClientDPPlan, seed: int
) -> np.ndarray:
    """The mean update of ``n_sites`` sites from the mean that Flower's SecAgg+ returns for the
    vectors of :func:`encode_update` (each site's weight 1): the sum modulo m, centred,
    rescaled, rotated back and divided by ``n_sites``."""
    m = plan.modulus
    a = np.asarray(aggregate_mean, dtype=np.float64).reshape(-1)
    if a.size != plan.padded_dim:
        raise PrivacyError(f"client-level DP: an aggregate of {a.size} values, expected "
                           f"{plan.padded_dim}")  # fmt: skip
    total = np.rint(a * n_sites + n_sites * (m // 2)).astype(np.int64)
    centred = np.mod(total + m // 2, m) - m // 2
    return unrotate(centred.astype(np.float64) * plan.gamma, plan, seed) / float(n_sites)
