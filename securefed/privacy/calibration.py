"""From a privacy target (epsilon, delta) and a sensitivity to a noise scale.

- Gaussian: the analytic calibration of Balle and Wang (2018): the smallest sigma whose exact
  privacy profile satisfies delta(epsilon) <= delta. dp-accounting's ``get_sigma_gaussian`` finds it
  and we then check the exact condition ourselves and only ever round sigma *up*.
- Laplace: scale b = L1 / epsilon (pure epsilon-DP).
- Several events (e.g. T noisy iterations) for one stage: :func:`calibrate_noise_multiplier`
  searches the smallest noise multiplier whose composition, measured by the protocol's accountant,
  fits the stage's (epsilon, delta).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import dp_accounting
from scipy.special import log_ndtr

from securefed.errors import CalibrationError

__all__ = [
    "calibrate_noise_multiplier",
    "discrete_gaussian_sigma",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_log_delta",
    "gaussian_sigma",
    "laplace_epsilon",
    "laplace_scale",
]


def gaussian_log_delta(epsilon: float, sigma: float, sensitivity: float = 1.0) -> float:
    """log of the exact delta(epsilon) of the Gaussian mechanism N(0, sigma^2) with L2
    sensitivity ``sensitivity`` (Balle & Wang 2018, Theorem 8):
    delta = Phi(s/2 - eps/s) - exp(eps) * Phi(-s/2 - eps/s), s = sensitivity / sigma."""
    if sigma <= 0:
        return 0.0
    s = sensitivity / sigma
    a = log_ndtr(s / 2 - epsilon / s)
    b = epsilon + log_ndtr(-s / 2 - epsilon / s)
    if b >= a:
        return -math.inf
    return float(a + math.log1p(-math.exp(b - a)))


def gaussian_delta(epsilon: float, sigma: float, sensitivity: float = 1.0) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism (see :func:`gaussian_log_delta`)."""
    return math.exp(gaussian_log_delta(epsilon, sigma, sensitivity))


def gaussian_epsilon(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """Exact (smallest) epsilon of the Gaussian mechanism at ``delta``."""
    if sensitivity <= 0:
        return 0.0
    return float(dp_accounting.get_epsilon_gaussian(sigma / sensitivity, delta))


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest noise std (up to a relative 1e-9, rounded up) for (epsilon, delta)-DP with the
    given L2 sensitivity. Never returns a sigma that fails the exact condition."""
    _check_target(epsilon, delta, "gaussian")
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise CalibrationError(
            f"gaussian calibration: L2 sensitivity must be > 0, got {sensitivity}"
        )
    unit = float(dp_accounting.get_sigma_gaussian(epsilon, delta))
    log_target = math.log(delta)
    for _ in range(200):
        if gaussian_log_delta(epsilon, unit, 1.0) <= log_target:
            return unit * sensitivity
        unit *= 1 + 1e-9
    raise CalibrationError(
        f"gaussian calibration did not converge for eps={epsilon}, delta={delta}"
    )  # pragma: no cover


def discrete_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Noise std of the discrete Gaussian for (epsilon, delta)-DP at the given L2 sensitivity,
    through its zero-concentrated DP: N_Z(0, sigma^2) has the Renyi divergences of the continuous
    Gaussian at integer shifts (Canonne, Kamath and Steinke 2020), so the RDP accountant's
    conversion is sound for it. (The analytic calibration of :func:`gaussian_sigma` is exact for
    the continuous mechanism only; this one is a little larger.)"""
    _check_target(epsilon, delta, "gaussian")
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise CalibrationError(
            f"gaussian calibration: L2 sensitivity must be > 0, got {sensitivity}"
        )
    z = calibrate_noise_multiplier(
        epsilon, delta, dp_accounting.GaussianDpEvent, dp_accounting.rdp.RdpAccountant
    )
    return z * sensitivity


def laplace_scale(epsilon: float, l1_sensitivity: float) -> float:
    """Laplace scale b = L1 / epsilon (pure epsilon-DP)."""
    _check_target(epsilon, 0.0, "laplace")
    if not (math.isfinite(l1_sensitivity) and l1_sensitivity > 0):
        raise CalibrationError(
            f"laplace calibration: L1 sensitivity must be > 0, got {l1_sensitivity}"
        )
    return l1_sensitivity / epsilon


def laplace_epsilon(scale: float, l1_sensitivity: float) -> float:
    """Exact epsilon of Laplace noise of scale ``scale``: max log density ratio = L1 / b."""
    return l1_sensitivity / scale


def calibrate_noise_multiplier(
    epsilon: float,
    delta: float,
    make_event: Callable[[float], dp_accounting.DpEvent],
    make_accountant: Callable[[], dp_accounting.PrivacyAccountant],
    *,
    upper: float = 1e4,
) -> float:
    """Smallest noise multiplier m <= ``upper`` such that the accountant reports
    epsilon <= ``epsilon`` at ``delta`` for ``make_event(m)``. The bracket is found by halving m
    from ``upper`` (PLD grids explode for tiny m, so m is never tried far below the answer), then
    dp-accounting's ``calibrate_dp_mechanism`` solves it, and the result is re-checked."""
    _check_target(epsilon, delta, "accountant")

    def eps_at(m: float) -> float:
        acc = make_accountant()
        acc.compose(make_event(m))
        return float(acc.get_epsilon(delta))

    try:
        if eps_at(upper) > epsilon:
            raise CalibrationError(
                f"cannot reach eps={epsilon} at delta={delta} with a noise multiplier <= {upper}"
            )
        hi = upper
        while eps_at(hi / 2) <= epsilon:
            hi /= 2
            if hi < 1e-6:
                raise CalibrationError(f"eps={epsilon} is reached without noise: check the event")
        m = float(
            dp_accounting.calibrate_dp_mechanism(
                make_accountant,
                make_event,
                epsilon,
                delta,
                bracket_interval=dp_accounting.ExplicitBracketInterval(hi / 2, hi),
            )
        )
    except (ValueError, dp_accounting.UnsupportedEventError) as exc:
        raise CalibrationError(
            f"cannot calibrate a noise multiplier for eps={epsilon}, delta={delta}: {exc}"
        ) from exc
    for _ in range(100):
        if eps_at(m) <= epsilon:
            return m
        m *= 1 + 1e-6
    raise CalibrationError(f"calibrated multiplier {m} fails the check")  # pragma: no cover


def _check_target(epsilon: float, delta: float, what: str) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise CalibrationError(f"{what} calibration: epsilon must be finite and > 0, got {epsilon}")
    if what == "gaussian" and not 0 < delta < 1:
        raise CalibrationError(f"gaussian calibration: delta must be in (0, 1), got {delta}")
    if not 0 <= delta < 1:
        raise CalibrationError(f"{what} calibration: delta must be in [0, 1), got {delta}")
