"""Differential privacy at the site: bounds, clipping, projections, sensitivity, calibration,
CSPRNG noise, accounting (dp-accounting) and the hash-chained site ledger.

This package never imports cryptography, tenseal, flwr or torch (it sits below them).
"""

from securefed.privacy.accounting import (
    Charge,
    accountant_epsilon,
    composed_epsilon,
    event_from_json,
    event_to_json,
    make_accountant,
    verify_claim,
)
from securefed.privacy.bounds import (
    Bounds,
    bounds_from_bytes,
    derive_bounds,
    load_pinned_bounds,
    read_bounds,
    write_bounds,
)
from securefed.privacy.calibration import (
    calibrate_noise_multiplier,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_sigma,
    laplace_epsilon,
    laplace_scale,
)
from securefed.privacy.clipping import clip_to_bounds, from_unit_box, to_unit_box
from securefed.privacy.ledger import (
    LEDGER_FILE,
    BudgetSpec,
    ChargeHandle,
    Ledger,
    LedgerState,
    read_ledger,
    stage_allocations,
)
from securefed.privacy.noise import (
    NoiseSource,
    SecureNoise,
    UnsafeSeededNoise,
    distributed_discrete_gaussian_share,
    noise_source_for,
)

__all__ = [
    "LEDGER_FILE",
    "Bounds",
    "BudgetSpec",
    "Charge",
    "ChargeHandle",
    "Ledger",
    "LedgerState",
    "NoiseSource",
    "SecureNoise",
    "UnsafeSeededNoise",
    "accountant_epsilon",
    "bounds_from_bytes",
    "calibrate_noise_multiplier",
    "clip_to_bounds",
    "composed_epsilon",
    "derive_bounds",
    "distributed_discrete_gaussian_share",
    "event_from_json",
    "event_to_json",
    "from_unit_box",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_sigma",
    "laplace_epsilon",
    "laplace_scale",
    "load_pinned_bounds",
    "make_accountant",
    "noise_source_for",
    "read_bounds",
    "read_ledger",
    "stage_allocations",
    "to_unit_box",
    "verify_claim",
    "write_bounds",
]
