"""Per-method summaries of per-case test metrics (results.json, report.html), in the one
convention of :func:`securefed.evaluation.metrics.mean_metrics`: Dice mean over every case, HD95
mean over the cases where it is defined (with the number undefined)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from securefed.evaluation.metrics import mean_metrics
from securefed.stats import bootstrap_interval

__all__ = [
    "METHOD_ORDER", "MIN_INTERVAL_CASES", "NON_PRIVATE", "dice_cis", "mean_ci",
    "summarize_methods", "summarize_rows",
]  # fmt: skip

REGION_KEYS = {"TC": "dice_tc", "WT": "dice_wt", "ET": "dice_et"}
METHOD_ORDER = (
    "public-start", "local", "local-finetune", "fedavg", "cffl", "cffl-ideal", "centralized",
)  # fmt: skip
NON_PRIVATE = frozenset({"centralized", "cffl-ideal"})
MIN_INTERVAL_CASES = 3
"""Fewer cases than this get no interval: a bootstrap of one case is the case itself and one of two
cases is hardly wider (the report says "n too small" instead)."""


def _defined(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Rows with missing metrics (None) as NaN, so mean_metrics can count them."""
    keys = ["dice_tc", "dice_wt", "dice_et", "dice_mean", "hd95_tc", "hd95_wt", "hd95_et"]
    out = []
    for r in rows:
        out.append({k: float("nan") if r.get(k) is None else float(r[k]) for k in keys})
    return out


def mean_ci(
    rows: Sequence[Mapping[str, Any]], *, key: str = "dice_mean", boot: int = 2000
) -> list[float] | None:
    """95 % percentile bootstrap interval of the mean of ``key`` (default the mean Dice) over
    ``rows`` (cases resampled, fixed seed: :func:`securefed.stats.bootstrap_interval`); None with
    fewer than ``MIN_INTERVAL_CASES`` cases where it is defined."""
    import numpy as np

    values = np.array([float(r[key]) for r in rows if r.get(key) is not None])
    values = values[np.isfinite(values)]
    if values.size < MIN_INTERVAL_CASES:
        return None
    return bootstrap_interval(np.mean, [values], vectorized=True, n_resamples=boot)


def dice_cis(
    rows: Sequence[Mapping[str, Any]], *, boot: int = 2000
) -> dict[str, list[float] | None]:
    """:func:`mean_ci` of the Dice of each region (``TC``, ``WT``, ``ET``) and of their mean
    (``mean``): the intervals of the report's Dice table and bar chart."""
    keys = {**REGION_KEYS, "mean": "dice_mean"}
    return {name: mean_ci(rows, key=key, boot=boot) for name, key in keys.items()}


def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``mean`` (Dice per region and overall), ``hd95`` (per region), ``hd95_undefined`` and
    ``n`` of a group of per-case rows."""
    m = mean_metrics(_defined(rows)) if rows else {}
    mean: dict[str, float | None] = {r: m.get(k) for r, k in REGION_KEYS.items()}
    mean["mean"] = m.get("dice_mean")
    hd = {r: m.get(f"hd95_{r.lower()}") for r in REGION_KEYS}
    undefined = {r: int(m.get(f"hd95_{r.lower()}_undefined", 0)) for r in REGION_KEYS}
    return {"mean": mean, "hd95": hd, "hd95_undefined": undefined, "n": len(rows)}


def summarize_methods(
    rows: Sequence[Mapping[str, Any]], scanner_of: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per method: Dice means per region with their 95 % bootstrap intervals over the cases
    (``ci``), HD95 means, and the Dice means per cluster, site and (with ``scanner_of``) scanner
    (the scanner's with an interval of the mean Dice)."""
    by_method: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_method[str(row["method"])].append(row)
    out: dict[str, dict[str, Any]] = {}
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    for method in sorted(by_method, key=lambda m: rank.get(m, len(rank))):
        mrows = by_method[method]
        s = summarize_rows(mrows)
        res: dict[str, Any] = {
            "mean": s["mean"],
            "ci": dice_cis(mrows),
            "hd95": s["hd95"],
            "hd95_undefined": s["hd95_undefined"],
            "n_cases": s["n"],
            "private": method not in NON_PRIVATE,
        }
        for key, label in (("cluster", "per_cluster"), ("site", "per_site")):
            groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
            for r in mrows:
                if r.get(key) is not None:
                    groups[str(r[key])].append(r)
            res[label] = {
                g: {**summarize_rows(v)["mean"], "n": len(v)} for g, v in sorted(groups.items())
            }
        if scanner_of:
            scanners: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
            for r in mrows:
                scanners[scanner_of.get(str(r["subject_id"]), "?")].append(r)
            res["per_scanner"] = {
                g: {**summarize_rows(v)["mean"], "n": len(v), "ci": mean_ci(v)}
                for g, v in sorted(scanners.items())
            }
        out[method] = res
    return out
