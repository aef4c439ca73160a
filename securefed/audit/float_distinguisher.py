"""Mironov's (2012) floating-point distinguisher, by replaying a sampler's arithmetic.

A float Laplace sampler maps a 53-bit uniform ``u = (k + 0.5) / 2^53`` through
``-b * sign(u - 0.5) * log1p(-2 |u - 0.5|)`` and releases ``x + noise`` in float64. Not every
float is reachable: for an output ``o`` the audit inverts the closed form to the few candidate
``k`` and replays the forward computation at input ``x``; if none reproduces ``o`` bit for bit,
``o`` is impossible at input ``x``. An output that is impossible at one input and possible at a
neighbouring one identifies the input with certainty: the mechanism is not pure epsilon-DP (its
delta is at least the fraction of such outputs).

A release on an integer grid (securefed's discrete Gaussian and Laplace, OpenDP) has every grid
point reachable from every input, so the same test finds nothing (:func:`grid_impossible`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["float_laplace_forward", "float_laplace_impossible", "grid_impossible"]

_TWO_POW_53 = float(2**53)


def float_laplace_forward(k: np.ndarray, scale: float) -> np.ndarray:
    """securefed's float Laplace (``SecureNoise.laplace``) from its 53-bit integers ``k``."""
    u = (k.astype(np.float64) + 0.5) / _TWO_POW_53 - 0.5
    return -scale * np.sign(u) * np.log1p(-2.0 * np.abs(u))


def float_laplace_impossible(outputs: np.ndarray, x: float, scale: float) -> np.ndarray:
    """Which float outputs no 53-bit uniform can produce as ``x + laplace(scale)``."""
    outputs = np.asarray(outputs, dtype=np.float64)
    noise = outputs - x
    # Invert |noise| = -b log(1 - 2|u|): |u| = (1 - exp(-|noise|/b)) / 2, sign(u) = sign(noise).
    mag = -np.expm1(-np.abs(noise) / scale) / 2.0
    u = 0.5 + np.sign(noise) * mag
    centre = np.floor(u * _TWO_POW_53 - 0.5)
    possible = np.zeros(outputs.shape, dtype=bool)
    for offset in range(-3, 4):
        k = np.clip(centre + offset, 0, _TWO_POW_53 - 1)
        possible |= (x + float_laplace_forward(k, scale)) == outputs
    return ~possible


def grid_impossible(outputs: np.ndarray, x_units: int) -> np.ndarray:
    """Outputs of an integer-grid release ``x + Z`` that input ``x_units`` cannot produce: those
    off the integer lattice (none, for a correct sampler)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return outputs - x_units != np.rint(outputs - x_units)
