"""What a site may send during federated training, decided from its own copy of the protocol.

Under a plain protocol (epsilon infinite everywhere) a site sends what the paper's method uses:
FedAvg weights = its train case counts, its mean train loss, its validation case count and mean
Dice per round, and it joins the federation of every cluster it holds train cases of (assigned on
its raw vectors). Under a protocol that claims a finite epsilon each of these is an exact function
of patient data, so a site sends instead:

- a FedAvg weight of 1 (uniform weights: public);
- no train loss;
- no validation metric: the server keeps each phase's last round (a public rule) instead of the
  round with the best pooled validation Dice;
- cluster membership computed on something the server already holds or cannot see:
  ``released``: a site assigns every case on the vector it released (with ``local-dp`` the
  noised one: post-processing of a DP release; the server can compute the same assignment);
  ``all-sites``: with ``secure-aggregate`` features every site joins every cluster's federation
  and a site with no train case of a cluster returns the model it received, masked by SecAgg+ like
  every other update (so the server learns only the sum).

Tests: ``tests/federation/test_egress.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from securefed.protocol.schema import Protocol

__all__ = ["TrainingEgress", "training_egress"]

Weights = Literal["train-counts", "uniform"]
Membership = Literal["raw", "released", "all-sites"]


@dataclass(frozen=True)
class TrainingEgress:
    """The training values a site sends under one protocol (see the module docstring)."""

    weights: Weights
    train_loss: bool
    validation: bool
    membership: Membership

    def describe(self) -> list[str]:
        """Plain lines for the protocol render and the report."""
        lines = [
            "FedAvg weights: "
            + (
                "each site's train case count (clear)"
                if self.weights == "train-counts"
                else "uniform (1 per site; no case count leaves a site)"
            ),  # fmt: skip
            "train loss: " + ("sent in clear" if self.train_loss else "kept at the site"),
            "validation Dice and counts: "
            + (
                "sent in clear each round; the best round is kept"
                if self.validation
                else "kept at the site; the last round of each phase is kept"
            ),  # fmt: skip
        ]
        membership = {
            "raw": "the sites holding train cases of it, assigned on raw vectors (clear)",
            "released": "the sites holding train cases of it, assigned on their released "
            "(noised) vectors: the server can compute this itself",
            "all-sites": "every site; a site without train cases of the cluster returns the "
            "model it received, masked under SecAgg+",
        }[self.membership]
        lines.append("cluster federations: " + membership)
        return lines


def training_egress(protocol: Protocol) -> TrainingEgress:
    """The training egress policy of ``protocol`` (the site's own copy decides)."""
    if not protocol.claims_finite_epsilon:
        return TrainingEgress("train-counts", True, True, "raw")
    # plain features: the server already holds every released (raw) vector, so an assignment on
    # them tells it nothing new; local-dp: on the noised vectors; secure-aggregate: none released.
    membership: Membership = (
        "all-sites" if protocol.release.mode == "secure-aggregate" else ("released")
    )
    return TrainingEgress("uniform", False, False, membership)
