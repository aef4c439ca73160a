"""Local DP trade-off: noise std per released coordinate relative to its declared range.

Releases compared (unit of privacy = one patient, replace-one, delta = 1e-5):
all 372 features, a 72-feature subset (e.g. the first-order features), and a seeded random
orthonormal projection to 8 dims; at epsilon 1, 4, 16, 64. Each released coordinate lives in
[0, 1] (its declared range), so the relative noise is sigma (Gaussian) or sqrt(2) * b (Laplace).
The last column is the std of a coordinate when the features are uniform in their box (a
stand-in for the data's spread): it shows that the projection's box-geometry bounds are loose,
so its signal occupies a small part of its declared range. Pure calibration: no data needed.
Run: .venv/bin/python benchmarks/privacy_tradeoff.py
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np

from securefed.privacy.accounting import accountant_epsilon
from securefed.privacy.bounds import Bounds
from securefed.privacy.calibration import gaussian_sigma, laplace_scale
from securefed.privacy.geometry import identity_geometry, random_geometry
from securefed.privacy.sensitivity import local_sensitivity

DELTA = 1e-5
EPSILONS = (1.0, 4.0, 16.0, 64.0)


def main() -> None:
    cols = tuple(f"f{i:03d}" for i in range(372))
    bounds = Bounds(cols, np.zeros(372), np.ones(372), "unit box")
    releases = {
        "372 features": identity_geometry(bounds),
        "72-feature subset": identity_geometry(bounds, cols[:72]),
        "8-dim random projection": random_geometry(bounds, 8, seed=0),
    }
    print(
        "| release | L2 sens. | L1 sens. | eps | Gaussian std / range | Laplace std / range "
        "| RDP eps of that Gaussian | uniform-box signal std / range |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, geo in releases.items():
        s = local_sensitivity(geo, "replace-one")
        # coordinate = A u + b with u ~ U[0,1]^D: std = ||a_i||_2 / sqrt(12); range 1
        signal = float(np.mean(np.linalg.norm(geo.linear, axis=1))) / math.sqrt(12)
        for eps in EPSILONS:
            sigma = gaussian_sigma(eps, DELTA, s.l2)
            lap = math.sqrt(2) * laplace_scale(eps, s.l1)
            rdp = accountant_epsilon([dp_accounting.GaussianDpEvent(sigma / s.l2)], DELTA, "rdp")
            print(
                f"| {name} | {s.l2:.3g} | {s.l1:.3g} | {eps:g} | {sigma:.3g} | {lap:.3g} "
                f"| {rdp:.3g} | {signal:.3g} |"
            )


if __name__ == "__main__":
    main()
