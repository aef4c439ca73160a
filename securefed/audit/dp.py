"""Empirical DP audits (``securefed audit dp``): a lower bound on each mechanism's epsilon.

For each mechanism the audit draws ``trials`` outputs at each of two worst-case neighbouring
inputs (0 and the sensitivity, along one coordinate: for these additive mechanisms the
one-dimensional shift is the worst case), with the very sampler securefed releases with. The
first half of the trials picks the threshold ``t`` of the test "output >= t" with the largest
empirical privacy loss; the second half bounds it: with Clopper-Pearson intervals at 99.9 %
(Bonferroni-split between the two rates), ``epsilon >= log((TPR_lo - delta) / FPR_hi)``. This is
a valid lower bound whatever the threshold (chosen on independent samples). A lower bound above
the claim is a finding (exit 4). Mironov's floating-point distinguisher
(securefed.audit.float_distinguisher) runs on every mechanism's outputs: any output impossible at
one input and possible at the other is a finding too (epsilon infinite).

Mechanisms (names for ``--mechanism``):

- ``feature-gaussian``: the local-dp release's discrete Gaussian on the 2^-12 grid (OpenDP),
  sigma from ``discrete_gaussian_sigma`` at the claim;
- ``feature-laplace``: the local-dp release's discrete Laplace, scale = sensitivity / epsilon;
- ``clustering-shares``: the secure-aggregate clustering's distributed discrete Gaussian: the
  honest shares of n = 3 sites with t = 1 colluding (what the server and the colluder cannot
  remove), summed;
- ``float-laplace``: a float64 Laplace sampler (securefed's release noise before the discrete
  samplers, kept as ``SecureNoise.laplace``): a reference the audit must catch (not in the default
  set). DP-SGD is not audited yet (its one-run audit with canaries is open work).

``noise_scale`` < 1 (simulation only, never for a real claim) multiplies every mechanism's noise:
the audit's power is shown by the bound rising above the claim
(``tests/audit/test_dp_audit.py::test_under_noised_mechanisms_are_caught``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta

from securefed.audit.float_distinguisher import float_laplace_impossible, grid_impossible
from securefed.errors import ConfigError
from securefed.fileio import write_json_atomic
from securefed.privacy.calibration import discrete_gaussian_sigma, laplace_scale
from securefed.privacy.noise import SecureNoise

__all__ = [
    "DEFAULT_MECHANISMS",
    "MECHANISMS",
    "MechanismAudit",
    "clopper_pearson",
    "epsilon_lower_bound",
    "run_dp_audit",
]

GRID_UNITS = 4096  # sensitivity 1 on the 2^-12 grid of the unit box
CONFIDENCE = 0.999


@dataclass(frozen=True)
class MechanismAudit:
    """One mechanism's samples at the two neighbouring inputs, and how to read them."""

    name: str
    claimed_epsilon: float
    delta: float
    sample: Callable[[int, int], np.ndarray]  # (input in units, n) -> outputs
    shift: int  # the neighbouring input (the sensitivity, in the output's units)
    impossible: Callable[[np.ndarray, int], np.ndarray]  # outputs impossible at an input
    description: str


def _discrete(kind: str, scale: float) -> Callable[[int, int], np.ndarray]:
    noise = SecureNoise()

    def sample(x: int, n: int) -> np.ndarray:
        draw = noise.discrete_gaussian if kind == "gaussian" else noise.discrete_laplace
        return x + draw(scale, (n,)).astype(np.float64)

    return sample


def feature_gaussian(epsilon: float, delta: float, noise_scale: float) -> MechanismAudit:
    sigma = discrete_gaussian_sigma(epsilon, delta, float(GRID_UNITS)) * noise_scale
    return MechanismAudit(
        "feature-gaussian", epsilon, delta, _discrete("gaussian", sigma), GRID_UNITS,
        grid_impossible,
        f"local-dp release: discrete Gaussian (OpenDP), sigma {sigma:.1f} grid units at L2 "
        f"sensitivity {GRID_UNITS} (one unit-box coordinate)",
    )  # fmt: skip


def feature_laplace(epsilon: float, delta: float, noise_scale: float) -> MechanismAudit:
    scale = laplace_scale(epsilon, float(GRID_UNITS)) * noise_scale
    return MechanismAudit(
        "feature-laplace", epsilon, 0.0, _discrete("laplace", scale), GRID_UNITS,
        grid_impossible,
        f"local-dp release: discrete Laplace (OpenDP), scale {scale:.1f} grid units at L1 "
        f"sensitivity {GRID_UNITS}",
    )  # fmt: skip


def clustering_shares(epsilon: float, delta: float, noise_scale: float) -> MechanismAudit:
    n_sites, colluding = 3, 1
    honest = n_sites - colluding
    sigma = discrete_gaussian_sigma(epsilon, delta, float(GRID_UNITS))
    share = sigma / math.sqrt(honest) * noise_scale  # each site's share (min_contributors)
    noise = SecureNoise()

    def sample(x: int, n: int) -> np.ndarray:
        total = sum(noise.discrete_gaussian(share, (n,)) for _ in range(honest))
        return x + np.asarray(total, dtype=np.float64)

    return MechanismAudit(
        "clustering-shares", epsilon, delta, sample, GRID_UNITS, grid_impossible,
        f"secure-aggregate clustering: sum of the {honest} honest sites' discrete Gaussian "
        f"shares (sigma {share:.1f} grid units each) of {n_sites} sites, {colluding} colluding",
    )  # fmt: skip


def float_laplace(epsilon: float, delta: float, noise_scale: float) -> MechanismAudit:
    scale = 1.0 / epsilon * noise_scale  # sensitivity 1 in float units
    noise = SecureNoise()

    def sample(x: int, n: int) -> np.ndarray:
        return float(x) + noise.laplace(scale, (n,))

    def impossible(outputs: np.ndarray, x: int) -> np.ndarray:
        return float_laplace_impossible(outputs, float(x), scale)

    return MechanismAudit(
        "float-laplace", epsilon, 0.0, sample, 1, impossible,
        f"float64 Laplace (53-bit uniform, closed form), scale {scale:.3g} at sensitivity 1: "
        "the pre-discrete sampler, a reference the audit must catch",
    )  # fmt: skip


MECHANISMS: dict[str, Callable[[float, float, float], MechanismAudit]] = {
    "feature-gaussian": feature_gaussian,
    "feature-laplace": feature_laplace,
    "clustering-shares": clustering_shares,
    "float-laplace": float_laplace,
}
# The DP-SGD steps audited by the one-run audit, by their training.dp_sgd.noise source.
ONE_RUN: dict[str, str] = {"dp-sgd": "float", "dp-sgd-discrete": "discrete-gaussian"}
DEFAULT_MECHANISMS = ("feature-gaussian", "feature-laplace", "clustering-shares", *ONE_RUN)


# What `audit dp` does not exercise, said in every dp.json.
NOT_AUDITED: list[dict[str, str]] = [
    {"mechanism": "dp-sgd (amplification by sampling)",
     "why": "the canary runs use every slot at every step (the unamplified step); the amplified "
     "accounting of sampled batches is not exercised"},
    {"mechanism": "dp-sgd (the 3D segmentation model)",
     "why": "the canaries train a linear model through the same optimizer code; a canary audit "
     "of the 1.2 M-parameter model's own training is not run"},
    {"mechanism": "client-dp (training.client_dp)",
     "why": "its per-site noise is the distributed discrete Gaussian share audited as "
     "clustering-shares; the rotation, rounding and modular sum around it are not audited end "
     "to end"},
]  # fmt: skip


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Exact two-sided interval for a binomial rate."""
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def _best_threshold(y0: np.ndarray, y1: np.ndarray, delta: float, confidence: float) -> float:
    """The threshold whose Clopper-Pearson bound is largest on the selection half (the bound
    itself, not the point estimate, so that a far tail with a handful of outputs is not
    preferred to a well-populated threshold)."""
    grid = np.unique(np.quantile(y1, np.linspace(0.3, 0.9999, 300)))
    s0, s1 = np.sort(y0), np.sort(y1)
    n0 = len(s0) - np.searchsorted(s0, grid, side="left")
    n1 = len(s1) - np.searchsorted(s1, grid, side="left")
    a = (1.0 - confidence) / 2  # one-sided level of each rate (Bonferroni)
    fpr_hi = np.where(n0 == len(s0), 1.0, beta.ppf(1 - a, n0 + 1, len(s0) - n0))
    tpr_lo = np.where(n1 == 0, 0.0, beta.ppf(a, np.maximum(n1, 1), len(s1) - n1 + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(tpr_lo > delta, np.log((tpr_lo - delta) / fpr_hi), -np.inf)
    return float(grid[int(np.argmax(value))])


def epsilon_lower_bound(
    y0: np.ndarray, y1: np.ndarray, threshold: float, delta: float, confidence: float
) -> dict[str, float]:
    """Clopper-Pearson lower bound of the test ``output >= threshold`` (evaluation half)."""
    n0 = int(np.sum(y0 >= threshold))
    n1 = int(np.sum(y1 >= threshold))
    # Bonferroni over the two rates: each one-sided at (1 - confidence) / 2, i.e. the two-sided
    # interval at level 1 - (1 - confidence).
    fpr_hi = clopper_pearson(n0, len(y0), confidence)[1]
    tpr_lo = clopper_pearson(n1, len(y1), confidence)[0]
    bound = math.log((tpr_lo - delta) / fpr_hi) if tpr_lo > delta else 0.0
    return {"threshold": threshold, "fpr_upper": fpr_hi, "tpr_lower": tpr_lo,
            "lower_bound": max(0.0, bound)}  # fmt: skip


def audit_mechanism(
    mech: MechanismAudit, trials: int, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """Sample, bound epsilon, and run the floating-point distinguisher."""
    t0 = time.monotonic()
    y0 = mech.sample(0, trials)
    y1 = mech.sample(mech.shift, trials)
    half = trials // 2
    threshold = _best_threshold(y0[:half], y1[:half], mech.delta, confidence)
    test = epsilon_lower_bound(y0[half:], y1[half:], threshold, mech.delta, confidence)
    # Floating-point distinguisher: outputs at the neighbour that input 0 cannot produce.
    impossible = float(np.mean(mech.impossible(y1, 0)))
    possible_own = float(np.mean(~mech.impossible(y0, 0)))
    bound = math.inf if impossible > 0 and possible_own == 1.0 else test["lower_bound"]
    return {
        "mechanism": mech.name,
        "description": mech.description,
        "claimed_epsilon": mech.claimed_epsilon,
        "delta": mech.delta,
        "lower_bound": bound,
        "threshold_test": test,
        "float_distinguisher": {
            "impossible_fraction": impossible,
            "own_outputs_possible": possible_own,
        },  # fmt: skip
        "trials": trials,
        "confidence": confidence,
        "seconds": round(time.monotonic() - t0, 2),
        "finding": bound > mech.claimed_epsilon,
    }


def run_dp_audit(
    out: Path,
    *,
    mechanisms: tuple[str, ...] = DEFAULT_MECHANISMS,
    trials: int = 400_000,
    epsilon: float = 1.0,
    delta: float = 1e-5,
    noise_scale: float = 1.0,
    confidence: float = CONFIDENCE,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Audit each mechanism; write ``out/dp.json`` and ``out/dp.png``; return the document."""
    unknown = [m for m in mechanisms if m not in MECHANISMS and m not in ONE_RUN]
    if unknown:
        names = ", ".join([*MECHANISMS, *ONE_RUN])
        raise ConfigError(f"--mechanism {unknown[0]!r}: choose from {names}")
    if trials < 2000:
        raise ConfigError(f"--trials {trials}: at least 2000 (half select, half bound)")
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"--confidence {confidence}: must be in [0.5, 1)")
    if not 0 < noise_scale <= 1:
        raise ConfigError(f"--unsafe-noise-scale {noise_scale}: must be in (0, 1]")
    rows = []
    for name in mechanisms:
        if progress is not None:
            what = ("one DP-SGD run with 2000 canaries" if name in ONE_RUN
                    else f"{trials} trials at each of two neighbouring inputs")  # fmt: skip
            progress(f"{name}: {what}")
        if name in ONE_RUN:
            rows.append(_dp_sgd_row(name, epsilon, delta, noise_scale))
            continue
        mech = MECHANISMS[name](epsilon, delta, noise_scale)
        rows.append(audit_mechanism(mech, trials, confidence))
    doc = {
        "kind": "dp-audit",
        "noise_scale": noise_scale,
        "note": "noise_scale < 1 under-noises every mechanism on purpose (shows the audit's "
        "power; never a statement about securefed's releases)"
        if noise_scale < 1
        else "",
        "not_audited": NOT_AUDITED,
        "mechanisms": rows,
        "findings": [r["mechanism"] for r in rows if r["finding"]],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "dp.json", _json(doc))
    _plot(rows, out / "dp.png")
    return doc


def _dp_sgd_row(name: str, epsilon: float, delta: float, noise_scale: float) -> dict[str, Any]:
    """The one-run audit (securefed.audit.one_run) of one DP-SGD noise source, in the rows'
    shape."""
    from securefed.audit.one_run import run_one_run_audit

    t0 = time.monotonic()
    noise = ONE_RUN[name]
    res = run_one_run_audit(epsilon, delta, noise_scale=noise_scale, noise=noise)
    step = ("Opacus, secure_mode" if noise == "float"
            else "lattice sums, OpenDP's exact discrete Gaussian")  # fmt: skip
    why = (
        "Opacus draws torch floats: no replayable sampler"
        if noise == "float"
        else "the released gradient sums are lattice points: no float sample to replay"
    )
    return {
        "mechanism": name,
        "description": f"DP-SGD step ({step}), noise multiplier "
        f"{res['noise_multiplier']:.3g} for {res['steps']} steps; one-run audit (Steinke, Nasr, "
        f"Jagielski 2023) with {res['canaries']} gradient canaries, {res['guesses']} guesses, "
        f"{res['correct']} correct",
        "claimed_epsilon": epsilon,
        "delta": delta,
        "lower_bound": res["lower_bound"],
        "one_run": res,
        "float_distinguisher": {
            "impossible_fraction": None,
            "own_outputs_possible": None,
            "why": why,
        },  # fmt: skip
        "trials": res["canaries"],
        "confidence": 0.95,
        "seconds": round(time.monotonic() - t0, 2),
        "finding": res["lower_bound"] > epsilon,
    }


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["mechanism"] for r in rows]
    claims = [r["claimed_epsilon"] for r in rows]
    top = max(claims) * 3
    bounds = [min(r["lower_bound"], top) for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.2))
    xs = np.arange(len(rows))
    ax.bar(xs - 0.2, claims, 0.4, label="claimed epsilon", color="#4c72b0")
    colours = ["#c44e52" if r["finding"] else "#55a868" for r in rows]
    ax.bar(xs + 0.2, bounds, 0.4, label="empirical lower bound", color=colours)
    for x, r in zip(xs, rows, strict=True):
        if math.isinf(r["lower_bound"]):
            ax.text(x + 0.2, top, "inf", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_ylabel("epsilon")
    ax.set_title("DP audit: claim vs empirical lower bound", fontsize=9, pad=24)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
