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
  ``all-sites``: with ``secure-aggregate`` features every site joins every cluster's federation;
  its reply (masked by SecAgg+ or encrypted under BFV, so the server learns only the sum) is its
  update scaled by its weight ``n / secure_aggregation.max_weight`` (n: its train cases of the
  cluster, 0 for a site without any) followed by that weight: the server divides the two sums, so
  a cluster's model is the case-weighted average of the sites that hold it, never diluted by the
  sites that do not (``cluster_weights = "masked-counts"``; the sum of the weights, the cluster's
  train-case total over the round's sites, is what opens: ``egress_table``).

Tests: ``tests/federation/test_egress.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from securefed.protocol.schema import Protocol

__all__ = [
    "EgressRow",
    "StageEpsilon",
    "TrainingEgress",
    "egress_table",
    "stage_epsilons",
    "training_egress",
]

Weights = Literal["train-counts", "uniform"]
Membership = Literal["raw", "released", "all-sites"]
ClusterWeights = Literal["fedavg", "masked-counts"]


@dataclass(frozen=True)
class TrainingEgress:
    """The training values a site sends under one protocol (see the module docstring)."""

    weights: Weights
    train_loss: bool
    validation: bool
    membership: Membership
    cluster_weights: ClusterWeights = "fedavg"
    """How a cluster phase averages: ``fedavg`` (the FedAvg weights above, over the sites that
    take part), ``masked-counts`` (all-sites membership: each site's case weight travels inside
    the secure aggregate beside its scaled update; see the module docstring)."""

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
            "all-sites": "every site; each sends its update scaled by its train-case count of the "
            "cluster and that count, inside the secure aggregate (0 for a site without any): "
            "the cluster model is the case-weighted average of the sites that hold it",
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
    weighted: ClusterWeights = (
        "masked-counts"
        if membership == "all-sites" and not protocol.training.client_dp.enabled
        else "fedavg"
    )
    return TrainingEgress("uniform", False, False, membership, weighted)


@dataclass(frozen=True)
class EgressRow:
    """One value that leaves a site under a protocol: where, to whom, how protected, at which
    epsilon (``"-"``: nothing patient-derived; ``"inf"``: no DP), and the test that shows it."""

    stage: str
    value: str
    to: str
    protection: str
    epsilon: str
    test: str

    @property
    def epsilon_value(self) -> float:
        """``epsilon`` as a number: 0 for ``"-"`` (nothing patient-derived), inf for no DP."""
        if self.epsilon == "-":
            return 0.0
        if self.epsilon.startswith("inf"):
            return math.inf
        return float(self.epsilon)

    def to_json(self) -> dict[str, str]:
        return {
            "stage": self.stage,
            "value": self.value,
            "to": self.to,
            "protection": self.protection,
            "epsilon": self.epsilon,
            "test": self.test,
        }


_T_EGRESS = "tests/federation/test_egress.py"
_T_NEIGHBOUR = "tests/study/test_neighbouring.py"


def _g(value: float | None) -> str:
    """Short, and exact: ``float(_g(x)) == x`` (the site's policy reads it back)."""
    if value is None or value == float("inf"):
        return "inf"
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _feature_rows(p: Protocol) -> list[EgressRow]:
    rel = p.release
    if rel.mode == "plain":
        return [
            EgressRow("features", "per-case feature vectors", "server",
                      "sealed in transit only (the paper)", "inf",
                      "tests/site/test_release_collect.py::test_plain_round_trip"),
            EgressRow("features", "subject ids, splits, partition id", "server",
                      "sealed in transit only", "inf",
                      "tests/site/test_release_collect.py::test_plain_round_trip"),
        ]  # fmt: skip
    if rel.mode == "secure-aggregate":
        sec = p.clustering.secure
        t = sec.max_colluding_sites
        share = f"sigma^2/(n - {t})" if t else "sigma^2/n"
        return [
            EgressRow("clustering", "masked per-cluster counts and sums", "server",
                      "pairwise masks, only the sum opens; each site adds an exact discrete "
                      f"Gaussian share {share} on the 2^-12 grid; charged to the ledger",
                      _g(sec.epsilon),
                      "tests/clustering/test_secure.py::test_server_receives_only_masked_aggregates"),
            EgressRow("clustering", "site public key (X25519)", "other sites, server", "public",
                      "-", "tests/clustering/test_secure.py"),
        ]  # fmt: skip
    return [
        EgressRow("features", "per-case feature vectors", "server",
                  f"one row per patient, clipped, on the 2^-12 grid, discrete {rel.mechanism} "
                  "noise (OpenDP); charged to the ledger before any noise",
                  _g(rel.epsilon),
                  "tests/privacy/test_protection.py::"
                  "test_released_values_lie_on_the_grid_and_resist_the_float_replay"),
        EgressRow("features", "subject ids, splits, partition id", "server",
                  "pseudonymous ids of the released rows; replace-one neighbours only (the row "
                  "count, one per patient, never changes)", "-",
                  "tests/privacy/test_patients.py::test_local_dp_release_sends_one_row_per_patient"),
        EgressRow("features", "release id", "server", "random, 128 bits of the OS CSPRNG", "-",
                  "tests/site/test_crash_safe_release.py::"
                  "test_release_ids_are_random_not_derived_from_the_data"),
        EgressRow("features", "release metadata and ledger entries", "server",
                  "protocol-derived values, random ids and DP events; entry times", "-",
                  "tests/server/test_ledger_heads.py"),
    ]  # fmt: skip


def _training_rows(p: Protocol) -> list[EgressRow]:
    t = p.training
    e = training_egress(p)
    dp = t.dp_training is not None
    dp_eps = t.dp_training_budget[0] if t.dp_training_budget is not None else None
    mechanism = {
        "dp-sgd": (
            "; DP-SGD (lattice sums with OpenDP's exact discrete Gaussian), charged to the ledger"
            if t.dp_sgd.noise == "discrete-gaussian"
            else "; DP-SGD (Opacus Gaussian noise in floating point, secure_mode), charged to "
            "the ledger"
        ),
        "client-dp": "; client-level DP: clipped, rotated, rounded, plus each site's discrete "
        "Gaussian share (OpenDP) sized for the honest sites of any aggregate, summed modulo "
        "2^b inside SecAgg+, charged to the ledger",
    }.get(str(t.dp_training), "; not DP (no DP training)")
    weights_protection = {
        "secagg+": "SecAgg+: masked and quantised, only the sum opens",
        "bfv": "BFV: clipped, fixed point, encrypted under the sites' shared key; the server "
        "adds ciphertexts and the decryptor site opens only the MAC-verified sum",
        "fedavg": "clear (fedavg: the server sees each update)",
    }[t.aggregation] + mechanism
    clear = e.weights == "train-counts"
    membership = {
        "raw": ("clear: the sites holding train cases of a cluster, assigned on raw vectors",
                "inf"),
        "released": ("assigned on the vectors the site released: the server can compute it",
                     "-"),
        "all-sites": ("every site joins every cluster's federation; a site without cases of "
                      "it sends a zero update with weight 0 (DP-SGD: a noise-only DP-SGD round "
                      "and its noised weight), masked under SecAgg+ or encrypted under BFV like "
                      "every other reply",
                      "-"),
    }[e.membership]  # fmt: skip
    test_dp = f"{_T_EGRESS}::test_dp_protocol_sends_no_patient_derived_training_value"
    test_plain = f"{_T_EGRESS}::test_plain_protocol_sends_counts_loss_and_dice"
    test_all_sites = (
        f"{_T_EGRESS}::test_all_sites_membership_sends_a_zero_weight_for_an_empty_cluster"
    )
    weight_dp = t.dp_training == "dp-sgd"
    weighted_rows = [
        EgressRow("training", "cluster train-case weight", "server",
                  ("inside the secure aggregate beside the update (SecAgg+ masks, BFV "
                   "encryption): the site's expected patients per DP-SGD step / batch_size plus "
                   "its exact discrete Gaussian share of dp_sgd.weight_noise (sized for the "
                   "honest sites of any aggregate), charged with the round; only the noised sum "
                   "opens"
                   if weight_dp else
                   "inside the secure aggregate beside the update it scales (SecAgg+ masks, "
                   "BFV encryption): only its sum over the round's sites opens, the cluster's "
                   "train-case total / secure_aggregation.max_weight; not noised"),
                  _g(dp_eps) if weight_dp else "inf",
                  "tests/federation/test_weighting.py::"
                  "test_dp_sgd_under_secure_aggregate_charges_and_noises_every_cluster_round"
                  if weight_dp else
                  f"{_T_EGRESS}::test_cluster_phase_is_the_case_weighted_average_of_its_holders"),
    ] if e.cluster_weights == "masked-counts" else []  # fmt: skip
    he_rows = [
        EgressRow("training", "decrypted aggregate (decryptor site only)", "server",
                  "the weighted average of the round's models, once per phase and round, after "
                  "the MAC shows it is the sum of the declared sites (at least "
                  f"{t.min_sites_per_aggregate})", _g(dp_eps) if dp else "inf",
                  "tests/federation/test_he_round.py::test_decryptor_refuses_a_second_decryption"),
    ] if t.aggregation == "bfv" else []  # fmt: skip
    weights_test = {
        "bfv": "tests/federation/test_he_round.py::test_bfv_phase_matches_fedavg",
    }.get(t.aggregation, "tests/federation/test_simulation.py::test_secagg_matches_fedavg")
    if t.dp_training == "client-dp":
        weights_test = (
            "tests/federation/test_client_dp.py::"
            "test_client_dp_phase_is_the_noised_mean_of_the_clipped_updates"
        )
    return [
        EgressRow("training", "model weights", "server", weights_protection,
                  _g(dp_eps) if dp else "inf", weights_test),
        *he_rows,
        EgressRow("training", "FedAvg weight", "server",
                  "the site's train case count, clear" if clear else "1 (uniform, public)",
                  "inf" if clear else "-", test_plain if clear else test_dp),
        EgressRow("training", "mean train loss", "server",
                  "clear" if e.train_loss else "not sent",
                  "inf" if e.train_loss else "-", test_plain if e.train_loss else test_dp),
        EgressRow("training", "validation Dice and case count", "server",
                  "clear, every round" if e.validation else "not sent (last round kept)",
                  "inf" if e.validation else "-", test_plain if e.validation else test_dp),
        EgressRow("training", "cluster federation membership", "server", membership[0],
                  membership[1],
                  {"raw": "tests/study/test_cffl.py::test_cffl_phases_with_small_cluster_fallback",
                   "released": _T_NEIGHBOUR, "all-sites": test_all_sites}[e.membership]),
        EgressRow("training", "partition id and protocol hash", "server", "public", "-",
                  "tests/federation/test_simulation.py"),
        *weighted_rows,
        *([EgressRow("training", "signature over the site's SecAgg+ public keys", "server, "
                     "other sites", "public: the site's pinned key signs its fresh keys, node id "
                     "and the protocol hash", "-",
                     "tests/adversary/test_signed_secagg_keys.py")]
          if t.aggregation == "secagg+" else []),
        *([EgressRow("training", "ledger head in each DP training reply", "server",
                     "public: the entry count and hash of the site's ledger, whose charges "
                     "follow the protocol's public plan; signed", "-",
                     "tests/adversary/test_ledger_heads.py")]
          if t.dp_training else []),
        *([EgressRow("training", "budget status before each DP round", "server",
                     "yes or no: whether the site's ledger can pay the round; a function of the "
                     "protocol, the rounds already charged and the counts the neighbouring "
                     "relation makes public (DP-SGD under replace-one: the site's train patient "
                     "count, which replace-one neighbours share)", "-",
                     "tests/federation/test_client_dp.py::"
                     "test_training_stops_cleanly_when_a_budget_runs_out")]
          if t.dp_training else []),
        _timing_row(t.reply_slot_s),
    ]  # fmt: skip


def _timing_row(slot_s: float) -> EgressRow:
    """When a site's training replies leave (securefed.federation.pacing)."""
    if slot_s <= 0:
        return EgressRow("training", "reply timing", "server",
                         "not protected (training.reply_slot_s = 0): how long a round or a "
                         "stage takes grows with the site's data (loading, crops, extraction)",
                         "inf", "-")  # fmt: skip
    return EgressRow("training", "reply timing", "server",
                     f"paced: every local-training reply, and over a deployment every stage "
                     f"reply whose work reads the site's cases (features, assign, secure rounds; "
                     f"test requests under evaluation.dp_summary), leaves {slot_s:g} s after its "
                     "request; "
                     "a reply whose work did not fit is dropped and the fixed slot-overrun code "
                     "leaves at that time instead (one bit per round: whether the work fit, not "
                     "covered by epsilon; recorded in the site's audit log)", "-",
                     "tests/federation/test_pacing.py::"
                     "test_replies_leave_at_the_slot_whatever_the_work_took")  # fmt: skip


def egress_table(protocol: Protocol) -> list[EgressRow]:
    """Every value that leaves a site under ``protocol``, stage by stage (docs/stages.md has the
    same rows for every release mode; results.json and the report show this table)."""
    return [
        EgressRow("any", "envelope header", "recipient",
                  "signed, in clear: format, protocol hash, sender, recipient, stage, counter",
                  "-", "tests/crypto/test_fuzz.py"),
        *_feature_rows(protocol),
        *_training_rows(protocol),
        *_evaluation_rows(protocol),
    ]  # fmt: skip


_T_STAGES = "tests/federation/test_site_stages.py::"
_T_SUMMARY = "tests/federation/test_site_test_summary.py::"


def _evaluation_rows(protocol: Protocol) -> list[EgressRow]:
    """The evaluation, and the deployment's stage messages around clustering and evaluation
    (securefed.federation.site_stages): in simulation nothing leaves a site here; over a
    deployment each site acknowledges the cluster model and answers test requests as its
    protocol declares (the validation rule)."""
    if protocol.is_simulation:
        return [EgressRow("evaluation", "test Dice and HD95", "nobody",
                          "each site scores its own test cases; no evaluation message leaves it",
                          "-", "-")]  # fmt: skip
    clear = training_egress(protocol).validation
    summary = protocol.evaluation.dp_summary
    dp_rows = [] if clear or summary.epsilon is None else [
        EgressRow("evaluation", "signed masking key (DP test summary)", "server",
                  "the site's X25519 masking key, signed by its pinned key; nothing derived from "
                  "data", "-", _T_SUMMARY + "test_a_dp_summary_opens_only_as_the_noised_total"),
        EgressRow("evaluation", "DP test summary (sums of Dice per region of the global and "
                  "cluster models, test-case count)", "server",
                  f"one masked vector per training site, once; only the total over at least "
                  f"{summary.min_sites} sites opens, with distributed discrete Gaussian noise",
                  f"{summary.epsilon:g}",
                  _T_SUMMARY + "test_a_dp_summary_opens_only_as_the_noised_total"),
    ]  # fmt: skip
    return [
        EgressRow("clustering", "assign acknowledgement", "server",
                  "one fixed value: the site opened the server's sealed model (its clusters "
                  "stay at the site)", "-",
                  _T_STAGES + "test_the_guard_lets_a_stage_reply_carry_its_declared_field_only"),
        EgressRow("evaluation", "test case count and mean Dice per region", "server",
                  "clear, per site and model (securefed federation run)" if clear
                  else "not sent (a zero count, no metric)",
                  "inf" if clear else "-",
                  "tests/federation/test_pilot.py::"
                  "test_a_pilot_runs_every_stage_over_the_deployment" if clear
                  else _T_STAGES + "test_a_finite_epsilon_site_sends_no_test_metric"),
        *dp_rows,
    ]  # fmt: skip


@dataclass(frozen=True)
class StageEpsilon:
    """What one stage of a protocol really releases (:func:`egress_table`): ``dp``, the largest
    DP epsilon among its values (its allocation, which the ledger holds the site to; 0 when no
    DP value leaves), and ``clear``, the values that leave without DP (plain features, model
    updates without DP training, unpaced reply timing)."""

    stage: str
    dp: float
    clear: tuple[str, ...]

    @property
    def epsilon(self) -> float:
        """The stage's effective epsilon: inf when any value leaves without DP."""
        return math.inf if self.clear else self.dp


def stage_epsilons(protocol: Protocol) -> tuple[StageEpsilon, ...]:
    """Per stage of ``protocol``, in the order of :func:`egress_table`, what a site really spends
    (a site's policy bounds these, not the protocol's declared total: securefed.trust.policy)."""
    dp: dict[str, float] = {}
    clear: dict[str, list[str]] = {}
    for row in egress_table(protocol):
        value = row.epsilon_value
        dp.setdefault(row.stage, 0.0)
        if math.isinf(value):
            clear.setdefault(row.stage, []).append(row.value)
        else:
            dp[row.stage] = max(dp[row.stage], value)
    return tuple(StageEpsilon(stage, eps, tuple(clear.get(stage, ()))) for stage, eps in dp.items())
