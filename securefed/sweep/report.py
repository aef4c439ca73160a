"""The sweep's outputs: ``sweep.csv`` (one row per point, ``COLUMNS``), ``sweep.json`` (the grid
and the rows, per-scanner Dice included), ``plots/*.png`` (matplotlib) and ``report.html``
(Jinja2): Dice and ARI against epsilon, attack advantage against epsilon, the Pareto front."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from securefed.fileio import atomic_write_bytes, jsonable, write_json_atomic  # noqa: E402
from securefed.report.jinja import template_environment  # noqa: E402
from securefed.sweep.collect import COLUMNS  # noqa: E402

__all__ = ["write_outputs", "pareto_front"]

PLOTS = {
    "dice": "plots/dice_vs_epsilon.png",
    "ari": "plots/ari_vs_epsilon.png",
    "attacks": "plots/attack_vs_epsilon.png",
    "pareto": "plots/pareto.png",
}


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        return math.inf
    return None


def pareto_front(rows: list[dict[str, Any]]) -> list[str]:
    """Points not dominated in (lower epsilon_total, higher CFFL Dice), by increasing epsilon."""
    pts: list[tuple[str, float, float]] = []
    for r in rows:
        e, d = _num(r.get("epsilon_total")), _num(r.get("dice_cffl"))
        if r.get("status") == "done" and e is not None and d is not None:
            pts.append((str(r["point"]), e, d))
    front = []
    for p, e, d in pts:
        dominated = any((e2 <= e and d2 >= d) and (e2 < e or d2 > d) for _, e2, d2 in pts)
        if not dominated:
            front.append((e, -d, p))
    return [p for _, _, p in sorted(front)]


def _x(values: list[float | None]) -> tuple[list[float], float]:
    """Epsilons with infinity drawn at a right-hand position; that position."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    at_inf = max(finite) * 2 if finite else 1.0
    return [at_inf if v is None or math.isinf(v) else v for v in values], at_inf


def _axis(ax: Any, at_inf: float, xs: list[float], label: str) -> None:
    ticks = sorted(set(xs))
    if ticks and ticks[0] > 0 and ticks[-1] / ticks[0] > 20:  # epsilons spread over decades
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(ticks)
    ax.set_xticklabels(["inf" if t == at_inf else f"{t:.3g}" for t in ticks])
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _plots(out: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Draw the plots; returns those drawn (no Dice plots when no point trained a model)."""
    done = [r for r in rows if r.get("status") == "done"]
    total, inf_t = _x([_num(r.get("epsilon_total")) for r in done])
    feats, inf_f = _x([_num(r.get("feature_epsilon")) for r in done])
    trained = any(_num(r.get("dice_cffl")) is not None for r in done) or not done
    drawn = {k: v for k, v in PLOTS.items() if trained or k not in ("dice", "pareto")}
    for name in set(PLOTS) - set(drawn):
        (out / PLOTS[name]).unlink(missing_ok=True)
    _feature_plots(out, done, feats, inf_f)
    if not trained:
        return drawn

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for method, color in (("fedavg", "tab:blue"), ("cffl", "tab:orange")):
        ys = [_num(r.get(f"dice_{method}")) or 0.0 for r in done]
        pairs = list(zip(done, ys, strict=True))
        lo = [max(0.0, y - (_num(r.get(f"dice_{method}_lo")) or y)) for r, y in pairs]
        hi = [max(0.0, (_num(r.get(f"dice_{method}_hi")) or y) - y) for r, y in pairs]
        ax.errorbar(total, ys, yerr=[lo, hi], fmt="o", color=color, capsize=3,
                    label=method.upper() if method == "cffl" else "FedAvg")  # fmt: skip
    _axis(ax, inf_t, total, "epsilon per site (all stages)")
    ax.set_ylabel("test Dice (mean of TC, WT, ET; 95% bootstrap CI)")
    ax.legend()
    _save(fig, out / PLOTS["dice"])

    fig, ax = plt.subplots(figsize=(6.4, 4))
    front = set(pareto_front(done))
    dice = [_num(r.get("dice_cffl")) or 0.0 for r in done]
    ax.plot(total, dice, "o", color="tab:grey", label="grid point")
    fr = sorted((x, y) for x, y, r in zip(total, dice, done, strict=True) if r["point"] in front)
    if fr:
        ax.plot([p[0] for p in fr], [p[1] for p in fr], "-o", color="tab:red",
                label="Pareto front")  # fmt: skip
    _axis(ax, inf_t, total, "epsilon per site (all stages)")
    ax.set_ylabel("CFFL test Dice")
    ax.legend()
    _save(fig, out / PLOTS["pareto"])
    return drawn


def _feature_plots(out: Path, done: list[dict[str, Any]], feats: list[float], inf_f: float) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(feats, [_num(r.get("ari_scanner")) or 0.0 for r in done], "o", label="vs scanner")
    ax.plot(feats, [_num(r.get("ari_institution")) or 0.0 for r in done], "s",
            label="vs institution")  # fmt: skip
    _axis(ax, inf_f, feats, "feature epsilon per patient (inf: plain)")
    ax.set_ylabel("adjusted Rand index of the clusters")
    ax.legend()
    _save(fig, out / PLOTS["ari"])

    fig, ax = plt.subplots(figsize=(6.4, 4))
    drawn = False
    for key, marker in (("institution", "o"), ("scanner", "s")):
        adv = [_num(r.get(f"advantage_{key}")) for r in done]
        pts = [(x, float(y)) for x, y in zip(feats, adv, strict=True) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=f"{key} inference")
            drawn = True
    ax.axhline(0.0, color="grey", lw=1)
    _axis(ax, inf_f, feats, "feature epsilon per patient (inf: plain)")
    ax.set_ylabel("attack accuracy minus chance")
    if drawn:
        ax.legend()
    else:  # attacks = false, or only secure-aggregate points (no per-case vector to attack)
        ax.text(0.5, 0.5, "no feature attack was run on these points", ha="center",
                va="center", transform=ax.transAxes, color="grey")  # fmt: skip
    _save(fig, out / PLOTS["attacks"])


def _cell(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "" if value is None else str(value)
    if math.isinf(v):
        return "inf"
    return f"{v:.4g}"


def write_outputs(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """sweep.csv, sweep.json, the plots and report.html in ``out``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) if k not in ("point", "status", "release",
                         "training", "aggregation", "reason") else row.get(k, "")
                         for k in COLUMNS})  # fmt: skip
    atomic_write_bytes(out / "sweep.csv", buf.getvalue().encode())
    write_json_atomic(out / "sweep.json", {**meta, "columns": list(COLUMNS), "rows": rows})
    drawn = _plots(out, rows)
    env = template_environment("securefed.sweep")
    shown = (
        "point", "status", "ari_scanner", "dice_fedavg", "dice_cffl", "cffl_minus_fedavg",
        "advantage_institution", "epsilon_features", "epsilon_clustering", "epsilon_training",
        "epsilon_total", "bytes_per_client_per_round", "wall_s",
    )  # fmt: skip
    html = env.get_template("sweep.html.j2").render(
        meta=jsonable(meta),
        columns=shown,
        rows=[
            [_cell(r.get(c)) if c not in ("point", "status") else r.get(c, "") for c in shown]
            for r in rows
        ],  # fmt: skip
        reasons=[(r["point"], r.get("reason", "")) for r in rows if r.get("status") != "done"],
        plots={k: drawn.get(k, "") for k in PLOTS},
        front=pareto_front(rows),
    )
    atomic_write_bytes(out / "report.html", html.encode())
