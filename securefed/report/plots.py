"""Plots of a study run (matplotlib, Agg backend, PNG files under RUNDIR/plots/)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "MIN_INTERVAL_CASES",
    "REGIONS",
    "plot_cffl_gain",
    "plot_dice_by_method",
    "plot_overlay",
    "plot_training_curves",
]  # fmt: skip

REGIONS = ("TC", "WT", "ET")
MIN_INTERVAL_CASES = 3
"""A mean over fewer cases gets no interval in the report ("n too small") and no error bar (the
rule of ``securefed.evaluation.summary.MIN_INTERVAL_CASES``, not imported: it brings torch)."""


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_overlay(
    image: np.ndarray,
    label: np.ndarray,
    predictions: dict[str, np.ndarray],
    path: Path,
    title: str,
) -> Path:
    """One test case: the axial slice with the largest whole-tumour area of the truth, FLAIR in
    grey; the truth's WT (green) and TC (red) outlines, then each method's prediction the same
    way (``image``: (4, X, Y, Z) with FLAIR last; masks (3, X, Y, Z) as TC, WT, ET)."""
    z = int(np.argmax(label[1].sum(axis=(0, 1)))) if label[1].any() else image.shape[-1] // 2
    flair = np.asarray(image[-1, :, :, z], dtype=float).T
    panels = [("truth", label), *predictions.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (name, mask) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(flair, cmap="gray", origin="lower")
        for channel, color in ((1, "lime"), (0, "red")):
            sl = np.asarray(mask[channel, :, :, z], dtype=float).T
            if sl.any():
                ax.contour(sl, levels=[0.5], colors=color, linewidths=1.2)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_dice_by_method(methods: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars: mean Dice per region for each method (test cases of participating sites),
    with the 95 % bootstrap interval over the cases as error bars where the results hold one
    (none under ``MIN_INTERVAL_CASES`` cases); each method is labelled with its number of test
    cases."""
    names = [m for m, r in methods.items() if r.get("mean")]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 3.8))
    width = 0.8 / len(REGIONS)
    x = np.arange(len(names))
    for i, region in enumerate(REGIONS):
        values = [methods[m]["mean"].get(region) or 0.0 for m in names]
        errors = np.zeros((2, len(names)))
        for j, m in enumerate(names):
            ci = (methods[m].get("ci") or {}).get(region)
            if (methods[m].get("n_cases") or 0) < MIN_INTERVAL_CASES:
                continue  # n too small: no error bar
            if ci and ci[0] is not None and ci[1] is not None:
                errors[:, j] = max(0.0, values[j] - ci[0]), max(0.0, ci[1] - values[j])
        ax.bar(x + (i - 1) * width, values, width, label=region, yerr=errors,
               error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333"})  # fmt: skip
    labels = [
        m + ("" if methods[m].get("private", True) else "\n(non-private)")
        + (f"\nn={methods[m]['n_cases']}" if methods[m].get("n_cases") is not None else "")
        for m in names
    ]  # fmt: skip
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (mean over test cases)")
    ax.set_title("error bars: 95% bootstrap interval over the test cases", fontsize=8)
    ax.legend(ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_cffl_gain(
    methods: dict[str, dict[str, Any]], path: Path, fallback: Iterable[Any] = ()
) -> Path | None:
    """Mean-Dice gain of CFFL over FedAvg per cluster (percentage points). Clusters in
    ``fallback`` kept the global model (too few sites to finetune) and are labelled so."""
    cffl = methods.get("cffl", {}).get("per_cluster") or {}
    fedavg = methods.get("fedavg", {}).get("per_cluster") or {}
    clusters = sorted(set(cffl) & set(fedavg), key=lambda c: int(c))
    if not clusters:
        return None
    kept_global = {str(c) for c in fallback}
    gains = [100 * ((cffl[c].get("mean") or 0) - (fedavg[c].get("mean") or 0)) for c in clusters]
    counts = [cffl[c].get("n", 0) for c in clusters]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(clusters) + 2), 3.2))
    colors = [
        "tab:gray" if c in kept_global else "tab:green" if g >= 0 else "tab:red"
        for c, g in zip(clusters, gains, strict=True)
    ]
    ax.bar([f"{c}\n(n={n})" for c, n in zip(clusters, counts, strict=True)], gains, color=colors)
    for i, c in enumerate(clusters):
        if c in kept_global:
            ax.annotate("global\nmodel", (i, 0), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7, color="tab:gray")  # fmt: skip
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("cluster (test cases)")
    ax.set_ylabel("CFFL - FedAvg, mean Dice (points)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_training_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Validation Dice per round for the global phase and each cluster's finetuning (None when
    no round has one: the sites of a finite-epsilon protocol keep their validation metrics)."""
    if not any(h.get("val_dice") is not None for history in curves.values() for h in history):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, history in curves.items():
        rounds = [h["round"] for h in history if h.get("val_dice") is not None]
        values = [h["val_dice"] for h in history if h.get("val_dice") is not None]
        if rounds:
            ax.plot(rounds, values, marker="o", ms=3, label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("pooled validation Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_epsilon_curves(
    curves: dict[str, list[dict[str, Any]]], total: float, path: Path
) -> Path | None:
    """Each site's spent epsilon (at the protocol's delta) after each release or DP-SGD round,
    against the protocol's total (None when no site spent anything)."""
    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for site, rows in curves.items():
        if rows:
            ax.step([r["step"] for r in rows], [r["epsilon"] for r in rows], where="post",
                    marker="o", ms=3, label=site)  # fmt: skip
    if total != float("inf"):
        ax.axhline(total, color="black", ls="--", lw=1, label="protocol total")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("charge (release or DP-SGD round), in ledger order")
    ax.set_ylabel("epsilon spent")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
