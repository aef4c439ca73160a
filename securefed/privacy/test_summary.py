"""The DP test summary of a deployment under a finite epsilon (``evaluation.dp_summary``).

Each training site scores its own test cases (the global model and each case's cluster model)
and keeps the per-case Dice. For the summary it forms one vector: per method (``fedavg``,
``cffl``) and region (TC, WT, ET) the sum over its test cases of Dice clipped to [0, 1], then its
test-case count; it adds its share of distributed discrete Gaussian noise (sized so that the
sites that do not collude with the server alone reach sigma) and sends it masked; only the
noised total over the sites opens. The server divides each noised sum by the noised count.

Sensitivity (L2, one patient): a case adds at most 1 to each of the six Dice sums; under
replace-one the count does not move (sqrt(6)), under add-remove-one it moves by 1 (sqrt(7));
times ``privacy.max_cases_per_patient``. The bound holds for any model the coordinator sends (a
Dice is in [0, 1] whatever the model), so a crafted model cannot raise what the release says.

**Leaves a site**: one masked vector of 7 values, once per protocol (ledger release
``evaluation/test-summary``). Tests: ``tests/privacy/test_test_summary.py``,
``tests/federation/test_site_test_summary.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.errors import PrivacyError
from securefed.privacy.noise import SHARE_GRID

__all__ = [
    "LENGTH",
    "METHODS",
    "REGIONS",
    "RELEASE_ID",
    "STAGE",
    "TestSummaryPlan",
    "plan_test_summary",
    "site_vector",
    "summary_from_total",
]

METHODS = ("fedavg", "cffl")
REGIONS = ("tc", "wt", "et")
STAGE = "evaluation"
RELEASE_ID = "evaluation/test-summary"
LENGTH = len(METHODS) * len(REGIONS) + 1


@dataclass(frozen=True)
class TestSummaryPlan:
    """Everything the protocol fixes about the summary release."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sensitivity: float
    min_sites: int
    colluding: int

    __test__ = False  # not a pytest class

    @property
    def sigma(self) -> float:
        """The noise standard deviation of the opened total (each coordinate)."""
        return self.noise_multiplier * self.sensitivity

    def event(self) -> Any:
        """The DpEvent charged once per site (the multiplier relative to the sensitivity)."""
        import dp_accounting

        return dp_accounting.GaussianDpEvent(self.noise_multiplier)


def plan_test_summary(protocol: Any) -> TestSummaryPlan | None:
    """The plan of ``protocol`` (a schema Protocol); None when the summary is off."""
    import dp_accounting

    from securefed.privacy.accounting import make_accountant
    from securefed.privacy.calibration import calibrate_noise_multiplier

    spec = protocol.evaluation.dp_summary
    if spec.epsilon is None:
        return None
    z = calibrate_noise_multiplier(
        spec.epsilon, spec.delta, dp_accounting.GaussianDpEvent,
        lambda: make_accountant(protocol.privacy.accountant),
    )  # fmt: skip
    per_case = math.sqrt(6.0 if protocol.privacy.neighbouring == "replace-one" else 7.0)
    return TestSummaryPlan(
        epsilon=float(spec.epsilon),
        delta=float(spec.delta),
        noise_multiplier=float(z),
        sensitivity=per_case * int(protocol.privacy.max_cases_per_patient),
        min_sites=int(spec.min_sites),
        colluding=int(protocol.clustering.secure.max_colluding_sites),
    )


def site_vector(
    fedavg: Mapping[str, Sequence[float]], cffl: Mapping[str, Sequence[float]]
) -> np.ndarray:
    """The site's local vector from its per-case Dice (subject id -> (TC, WT, ET)) under the
    global model and under each case's cluster model: the six sums of Dice clipped to [0, 1] and
    the count, each on the share grid. Both maps must hold the same test cases."""
    if set(fedavg) != set(cffl):
        missing = sorted(set(fedavg) ^ set(cffl))
        raise PrivacyError(
            f"test summary: cases {missing[:5]} have a score under one model only; every test "
            "case needs its global and its cluster model's score"
        )
    out = np.zeros(LENGTH, dtype=np.float64)
    for m, scores in enumerate((fedavg, cffl)):
        for sid in sorted(scores):
            dice = np.asarray(scores[sid], dtype=np.float64)
            if dice.shape != (len(REGIONS),) or not np.isfinite(dice).all():
                raise PrivacyError(f"test summary: case {sid}: expected 3 finite Dice (TC, WT, ET)")
            # each case on the share grid inside [0, 1] before the sum: the sums are then exact
            # grid values and one case moves each by at most 1 (no rounding of the total)
            out[m * 3 : m * 3 + 3] += np.rint(np.clip(dice, 0.0, 1.0) / SHARE_GRID) * SHARE_GRID
    out[-1] = len(fedavg)
    return out


def summary_from_total(total: np.ndarray, plan: TestSummaryPlan, sites: int) -> dict[str, Any]:
    """Per method: the noised test-case count and mean Dice per region (the noised sums over the
    noised count, clipped to [0, 1]), with the noise that covers them."""
    total = np.asarray(total, dtype=np.float64)
    if total.shape != (LENGTH,):
        raise PrivacyError(f"test summary: an opened total of shape {total.shape}, not ({LENGTH},)")
    count = float(total[-1])
    out: dict[str, Any] = {}
    for m, method in enumerate(METHODS):
        row: dict[str, Any] = {"num_test": max(0, round(count)), "sites": sites}
        usable = count >= 1.0
        for r, region in enumerate(REGIONS):
            value = float(np.clip(total[m * 3 + r] / count, 0.0, 1.0)) if usable else None
            row[f"dice_{region}"] = value
        row["dice_mean"] = float(np.mean([row[f"dice_{x}"] for x in REGIONS])) if usable else None
        row["dp"] = {"epsilon": plan.epsilon, "delta": plan.delta, "sigma_sum": plan.sigma,
                     "noised_count": count}  # fmt: skip
        out[method] = row
    return out
