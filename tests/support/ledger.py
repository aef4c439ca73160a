"""A site ledger with a one-release budget, for the ledger tests and their crash children."""

from __future__ import annotations

import dp_accounting

from securefed.privacy.calibration import gaussian_sigma
from securefed.privacy.ledger import BudgetSpec, Ledger

PROTO = "sha256:" + "ab" * 32
BUDGET = BudgetSpec(1.0, 1e-5, "rdp", "replace-one", {"features": (1.0, 1e-5)})
SIGMA = gaussian_sigma(1.0, 1e-5, 1.0)  # one exact (1, 1e-5) release uses the whole budget


def event() -> dp_accounting.GaussianDpEvent:
    return dp_accounting.GaussianDpEvent(SIGMA)


def ledger(folder) -> Ledger:
    return Ledger(folder, site_id="site-1", protocol_hash=PROTO, budget=BUDGET)
