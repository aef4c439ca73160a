"""Noise sources: the OS CSPRNG by default, a seeded generator only as an explicit unsafe option.

Released values are noised on an integer grid with the discrete Gaussian and discrete Laplace
samplers of OpenDP (Canonne, Kamath and Steinke 2020), whose privacy is proven in exact
arithmetic and which draw from a cryptographically secure generator
(:meth:`SecureNoise.discrete_gaussian`, :meth:`SecureNoise.discrete_laplace`): a released integer
says nothing through its low-order bits, unlike floating-point noise (Mironov 2012).

The floating-point samplers (53-bit uniforms from ``os.urandom`` at bin midpoints, mapped through
the inverse CDF) remain for the shares of the secure-aggregate clustering, whose sum is
fixed-point encoded before masking; they carry the limitation above.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Protocol

import numpy as np
from scipy.special import ndtri

from securefed.errors import PrivacyError
from securefed.protocol.schema import Protocol as StudyProtocol

__all__ = [
    "SHARE_GRID",
    "NoiseSource",
    "SecureNoise",
    "UnsafeSeededNoise",
    "distributed_discrete_gaussian_share",
    "distributed_discrete_tau",
    "noise_source_for",
]

_TWO_POW_53 = float(2**53)


def _random_bytes(n: int) -> bytes:
    """Bytes from the OS CSPRNG (the only entropy used for private noise)."""
    return os.urandom(n)


class NoiseSource(Protocol):
    """Where noise comes from. ``name`` is recorded in release metadata."""

    name: str

    def gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray: ...

    def laplace(self, scale: float, shape: tuple[int, ...]) -> np.ndarray: ...

    def discrete_gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray: ...

    def discrete_laplace(self, scale: float, shape: tuple[int, ...]) -> np.ndarray: ...


def _discrete_sample(kind: str, scale: float, n: int) -> np.ndarray:
    """``n`` integers of OpenDP's discrete Gaussian (``scale`` = sigma) or discrete Laplace
    (``scale`` = b), centred at 0, from OpenDP's secure randomness."""
    import opendp.prelude as dp

    dp.enable_features("contrib")  # OpenDP's measurement constructors sit behind this flag
    space = dp.vector_domain(dp.atom_domain(T=int))
    if kind == "gaussian":
        measurement = dp.m.make_gaussian(space, dp.l2_distance(T=int), scale=float(scale))
    else:
        measurement = dp.m.make_laplace(space, dp.l1_distance(T=int), scale=float(scale))
    return np.asarray(measurement([0] * int(n)), dtype=np.int64)


class SecureNoise:
    """Noise from the OS CSPRNG (``os.urandom``)."""

    name = "os-csprng"

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniforms in (0, 1) on the 2^-53 grid midpoints."""
        n = int(np.prod(shape, dtype=np.int64))
        words = np.frombuffer(_random_bytes(8 * n), dtype="<u8") >> np.uint64(11)
        return ((words.astype(np.float64) + 0.5) / _TWO_POW_53).reshape(shape)

    def gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        return sigma * ndtri(self.uniform(shape))

    def laplace(self, scale: float, shape: tuple[int, ...]) -> np.ndarray:
        u = self.uniform(shape) - 0.5
        return -scale * np.sign(u) * np.log1p(-2.0 * np.abs(u))

    def discrete_gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        """Integers from the discrete Gaussian N_Z(0, sigma^2) (OpenDP, exact sampling)."""
        n = int(np.prod(shape, dtype=np.int64))
        return _discrete_sample("gaussian", sigma, n).reshape(shape)

    def discrete_laplace(self, scale: float, shape: tuple[int, ...]) -> np.ndarray:
        """Integers from the discrete Laplace with scale b (OpenDP, exact sampling)."""
        n = int(np.prod(shape, dtype=np.int64))
        return _discrete_sample("laplace", scale, n).reshape(shape)


class UnsafeSeededNoise:
    """Seeded numpy noise: reproducible and NOT private. Simulation protocols only."""

    name = "unsafe-seeded"

    def __init__(self, seed: int, *context: str) -> None:
        digest = hashlib.sha256("\x00".join((str(seed), *context)).encode()).digest()
        self._rng = np.random.default_rng(int.from_bytes(digest[:16], "little"))

    def gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.normal(0.0, sigma, size=shape)

    def laplace(self, scale: float, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.laplace(0.0, scale, size=shape)

    def discrete_gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        """Rounded seeded Gaussian integers (reproducible, NOT private, not the exact sampler)."""
        return np.rint(self.gaussian(sigma, shape)).astype(np.int64)

    def discrete_laplace(self, scale: float, shape: tuple[int, ...]) -> np.ndarray:
        """Rounded seeded Laplace integers (reproducible, NOT private, not the exact sampler)."""
        return np.rint(self.laplace(scale, shape)).astype(np.int64)


def noise_source_for(
    protocol: StudyProtocol, *context: str, unsafe_seed: int | None = None
) -> NoiseSource:
    """The noise source a release must use under ``protocol`` (a schema ``Protocol``).

    CSPRNG unless the protocol is a ``simulation`` with ``privacy.unsafe_seeded_noise = true``;
    then ``unsafe_seed`` (or ``privacy.unsafe_noise_seed``) seeds a generator per ``context``
    (e.g. site id and release id). An ``unsafe_seed`` under any other protocol is refused."""
    privacy = protocol.privacy
    allowed = protocol.study.mode == "simulation" and privacy.unsafe_seeded_noise
    if unsafe_seed is not None and not allowed:
        raise PrivacyError(
            "unsafe_seed: seeded noise is only allowed in a study.mode = 'simulation' protocol "
            "with privacy.unsafe_seeded_noise = true; drop the seed to use the OS CSPRNG"
        )
    seed = unsafe_seed if unsafe_seed is not None else privacy.unsafe_noise_seed
    if allowed and seed is not None:
        return UnsafeSeededNoise(int(seed), *context)
    return SecureNoise()


SHARE_GRID = 2.0**-12
"""Grid of the secure-aggregate shares and of the values they are added to (a power of two, so
the fixed-point encoding of the masked sums holds it exactly)."""

_TAU_LIMIT = 1e-12


def distributed_discrete_tau(sigma_units: float, n_parties: int) -> float:
    """Kairouz, Liu and Steinke (ICML 2021, "The Distributed Discrete Gaussian Mechanism"): the sum
    of n i.i.d. N_Z(0, s^2) is within tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1)) of
    N_Z(0, n s^2), which costs at most tau (times the dimension) on top of the discrete
    Gaussian's zCDP bound. ``sigma_units``: each share's s in grid units."""
    s2 = float(sigma_units) ** 2
    return 10.0 * sum(
        math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, max(1, n_parties))
    )


def distributed_discrete_gaussian_share(
    source: NoiseSource,
    sigma: float,
    n_parties: int,
    shape: tuple[int, ...],
    *,
    min_contributors: int | None = None,
    grid: float = SHARE_GRID,
) -> np.ndarray:
    """One party's share of distributed DISCRETE Gaussian noise on ``grid * Z``: an exact sample
    of N_Z(0, (sigma / grid)^2 / m) (OpenDP) times ``grid``, with m = ``min_contributors``
    (default ``n_parties``), so the sum over any m or more parties carries at least the noise of
    N(0, sigma^2) without floating-point sampling (Mironov 2012). The values it is added to must
    lie on the same grid. Refuses a share so small that the sum's distance to one discrete
    Gaussian (``distributed_discrete_tau`` times the dimension) would not be negligible
    (> 1e-12)."""
    m = n_parties if min_contributors is None else min_contributors
    if n_parties < 1 or not 1 <= m <= n_parties:
        raise PrivacyError(
            f"distributed noise: need 1 <= min_contributors ({m}) <= n_parties ({n_parties})"
        )
    units = sigma / grid / math.sqrt(m)
    tau = distributed_discrete_tau(units, n_parties) * int(np.prod(shape, dtype=np.int64))
    if tau > _TAU_LIMIT:
        raise PrivacyError(
            f"distributed noise: a share of {units:.3g} grid units is too small for the sum of "
            f"{n_parties} discrete Gaussians to be one (tau {tau:.2g} > {_TAU_LIMIT:g}); use a "
            "finer grid or more noise"
        )
    return source.discrete_gaussian(units, shape).astype(np.float64) * grid
