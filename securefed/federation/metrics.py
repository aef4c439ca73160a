"""Per-site validation metrics (what a site reports to the server) and their pooled mean.

A site reports, per evaluation round, only its number of validation cases and its mean Dice per
region (TC, WT, ET): no per-case value leaves the site.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from securefed.errors import EvaluationError

__all__ = ["REGIONS", "pooled_dice", "site_summary"]

REGIONS = ("tc", "wt", "et")


def _values(result: Mapping[str, Any], region: str) -> list[float]:
    key = f"dice_{region}"
    if "cases" in result:
        return [float(case[key]) for case in result["cases"]]
    value = result.get(key)
    if value is None:
        raise EvaluationError(f"evaluation result has no {key!r} (keys: {sorted(result)})")
    if isinstance(value, int | float):
        n = int(result.get("num_examples", 1))
        return [float(value)] * n
    return [float(v) for v in value]


def site_summary(result: Mapping[str, Any]) -> dict[str, float]:
    """Reduce a local evaluation (per-case Dice) to ``{num_val, dice_tc, dice_wt, dice_et,
    dice_mean}``: the only values a site sends back."""
    per_region = {r: _values(result, r) for r in REGIONS}
    n = len(per_region["tc"])
    if any(len(v) != n for v in per_region.values()):
        raise EvaluationError("evaluation result: regions have different case counts")
    out: dict[str, float] = {"num_val": float(n)}
    for region, values in per_region.items():
        if any(not math.isfinite(v) for v in values):
            raise EvaluationError(f"evaluation result: non-finite Dice for region {region}")
        out[f"dice_{region}"] = sum(values) / n if n else 0.0
    out["dice_mean"] = sum(out[f"dice_{r}"] for r in REGIONS) / len(REGIONS)
    return out


def pooled_dice(sites: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean Dice over all validation cases of all sites (site means weighted by case counts)."""
    sites = [s for s in sites if float(s.get("num_val", 0)) > 0]
    total = sum(float(s["num_val"]) for s in sites)
    out: dict[str, float] = {"num_val": total}
    for key in [f"dice_{r}" for r in REGIONS] + ["dice_mean"]:
        out[key] = sum(float(s[key]) * float(s["num_val"]) for s in sites) / total if total else 0.0
    return out
