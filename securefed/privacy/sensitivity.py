"""Sensitivity of a per-case release, derived from the declared geometry (never passed by hand).

Unit of privacy: one patient. In a local (per-case) release each case's vector is randomised on its
own, so the mechanism must hide any change of that one vector within its declared domain:

- replace-one: two neighbouring datasets differ in one case's vector; the bound is the diameter of
  the released domain.
- add/remove-one: the case's row is present or not. For a per-case local release the same
  diameter bound is used: the release of a case must not reveal its value wherever it lies in the
  domain (local DP), and whether a row exists is disclosed by the release itself (the subject id
  travels with it). Aggregates (sums) have other sensitivities and are derived by their stage.

Diameter of ``clip(A u + b, 0, 1)`` for u in [0, 1]^D: clipping onto a box is non-expansive in
L1 and L2, so L2 <= min(||A||_2 sqrt(D), sqrt(d)) and L1 <= min(sum |A_ij|, d, sqrt(d) L2).
For a selection of d features both are exact: sqrt(d) and d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securefed.privacy.geometry import ReleaseGeometry

__all__ = ["Sensitivity", "local_sensitivity"]


@dataclass(frozen=True)
class Sensitivity:
    """L1 and L2 sensitivities of one case's released vector (release-space units)."""

    l1: float
    l2: float
    dimension: int
    neighbouring: str


def local_sensitivity(geometry: ReleaseGeometry, neighbouring: str) -> Sensitivity:
    """Sensitivity of a per-case release with ``geometry`` under ``neighbouring``
    (``replace-one`` or ``add-remove-one``; both give the diameter, see the module docstring)."""
    if neighbouring not in ("replace-one", "add-remove-one"):
        raise ValueError(f"unknown neighbouring relation {neighbouring!r}")
    d = geometry.dimension
    if geometry.selected is not None:
        l2, l1 = math.sqrt(d), float(d)
    else:
        a = geometry.linear
        big_d = a.shape[1]
        op = float(np.linalg.norm(a, 2))
        l2 = min(op * math.sqrt(big_d), math.sqrt(d))
        l1 = min(float(np.abs(a).sum()), float(d), math.sqrt(d) * l2)
    return Sensitivity(l1=l1, l2=l2, dimension=d, neighbouring=neighbouring)
