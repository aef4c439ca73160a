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
import matplotlib.pyplot as plt

from securefed.fileio import atomic_write_bytes, jsonable, write_json_atomic
from securefed.report.jinja import template_environment
from securefed.sweep.collect import COLUMNS

__all__ = ["TABLE_HEADER", "dp_training", "pareto_front", "point_label", "point_words",
           "table_header", "table_rows", "write_outputs"]  # fmt: skip

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
    private = [dp_training(r) is not None for r in done]
    for method, color in (("fedavg", "tab:blue"), ("cffl", "tab:orange")):
        ys = [_num(r.get(f"dice_{method}")) or 0.0 for r in done]
        pairs = list(zip(done, ys, strict=True))
        lo = [max(0.0, y - (_num(r.get(f"dice_{method}_lo")) or y)) for r, y in pairs]
        hi = [max(0.0, (_num(r.get(f"dice_{method}_hi")) or y) - y) for r, y in pairs]
        name = "CFFL" if method == "cffl" else "FedAvg"
        for dp in (False, True):  # DP-trained points hollow
            idx = [i for i, p in enumerate(private) if p == dp]
            if idx:
                ax.errorbar([total[i] for i in idx], [ys[i] for i in idx],
                            yerr=[[lo[i] for i in idx], [hi[i] for i in idx]], fmt="o",
                            color=color, mfc="white" if dp else color, capsize=3,
                            label=f"{name}, DP training" if dp else name)  # fmt: skip
    _axis(ax, inf_t, total, "epsilon per site (all stages)")
    ax.set_ylabel("test Dice (mean of TC, WT, ET; 95% bootstrap CI)")
    ax.legend(fontsize=8)
    _save(fig, out / PLOTS["dice"])

    fig, ax = plt.subplots(figsize=(6.4, 4))
    front = set(pareto_front(done))
    dice = [_num(r.get("dice_cffl")) or 0.0 for r in done]
    for dp in (False, True):
        idx = [i for i, p in enumerate(private) if p == dp]
        if idx:
            ax.plot([total[i] for i in idx], [dice[i] for i in idx], "o", color="tab:grey",
                    mfc="white" if dp else "tab:grey",
                    label="grid point, DP training" if dp else "grid point")  # fmt: skip
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


_RELEASE_WORDS = {"plain": "plain (no DP)", "local-dp": "local DP",
                  "secure-aggregate": "secure aggregate"}  # fmt: skip
_TRAINING_WORDS = {"none": "no DP", "dp-sgd": "DP-SGD", "client-dp": "client-level DP"}
_AGGREGATION_WORDS = {"fedavg": "FedAvg (plain sums)", "secagg+": "SecAgg+", "bfv": "BFV"}


def _eps(value: Any) -> str:
    """An epsilon as text: "-" when nothing was charged, "inf" without DP, else 2 decimals (a
    whole number without them)."""
    v = _num(value)
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:g}" if float(v).is_integer() else f"{v:.2f}"


def dp_training(row: dict[str, Any]) -> str | None:
    """The DP training of a point ("DP-SGD" or "client-level DP"); None without one."""
    training = str(row.get("training") or "none")
    return _TRAINING_WORDS.get(training, training) if training != "none" else None


def point_words(row: dict[str, Any]) -> dict[str, str]:
    """A point's id in words: its feature release, training privacy and aggregation (from the
    row's grid columns), e.g. ``local-dp-e4_dp-sgd-e8_secagg+`` -> "local DP, epsilon 4",
    "DP-SGD, epsilon 8", "SecAgg+"."""
    release = str(row.get("release") or "")
    features = _RELEASE_WORDS.get(release, release)
    if release != "plain" and _num(row.get("feature_epsilon")) is not None:
        features += f", \u03b5 = {_eps(row.get('feature_epsilon'))}"
    training = dp_training(row) or "no DP"
    if dp_training(row) and _num(row.get("training_epsilon")) is not None:
        training += f", \u03b5 = {_eps(row.get('training_epsilon'))}"
    aggregation = str(row.get("aggregation") or "")
    return {"features": features, "training": training,
            "aggregation": _AGGREGATION_WORDS.get(aggregation, aggregation)}  # fmt: skip


def point_label(row: dict[str, Any]) -> str:
    """:func:`point_words` on one line: "local DP, \u03b5 = 4 / DP-SGD, \u03b5 = 8 / SecAgg+"."""
    return " / ".join(point_words(row).values())


def _fixed(value: Any, digits: int = 3, *, signed: bool = False) -> str:
    """A number with ``digits`` decimals, never in scientific notation ("" when missing); a
    signed value that rounds to zero is "0.000", without a sign."""
    v = _num(value)
    if v is None:
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    text = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return f"{0.0:.{digits}f}" if float(text) == 0 else text


def _with_interval(row: dict[str, Any], key: str, *, signed: bool = False) -> dict[str, str]:
    lo, hi = _num(row.get(f"{key}_lo")), _num(row.get(f"{key}_hi"))
    interval = (
        f"[{_fixed(lo, signed=signed)}, {_fixed(hi, signed=signed)}]"
        if lo is not None and hi is not None
        else ""
    )
    return _c(_fixed(row.get(key), signed=signed), interval)


def _c(value: str, interval: str = "", sub: str = "") -> dict[str, str]:
    """A table cell: its value, an interval below it (unbroken) and a note below it (wraps)."""
    return {"value": value, "interval": interval, "sub": sub}


def _megabytes(value: Any) -> str:
    v = _num(value)
    return "" if v is None else f"{v / 1e6:.1f} MB"


def _duration(value: Any) -> str:
    v = _num(value)
    if v is None:
        return ""
    return f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


TABLE_HEADER = (
    "features", "training", "aggregation", "ARI vs scanner", "Dice FedAvg", "Dice CFFL",
    "CFFL - FedAvg", "institution inference", "scanner inference", "\u03b5 per site",
    "upload (per site, round)", "time",
)  # fmt: skip
"""The columns of report.html's point table (sweep.csv keeps the raw columns); a status column
follows the aggregation when a point was not run."""

_STAGES = ("features", "clustering", "training")


def _epsilon_cell(row: dict[str, Any]) -> dict[str, str]:
    """The point's total epsilon per site, with what each stage charged below it."""
    if row.get("status") != "done":
        return _c("")
    parts = [f"{stage} {_eps(row.get(f'epsilon_{stage}'))}" for stage in _STAGES
             if _num(row.get(f"epsilon_{stage}")) is not None]  # fmt: skip
    return _c(_eps(row.get("epsilon_total")), sub=", ".join(parts))


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """report.html's point table: each point in words and formatted numbers (no scientific
    notation; Dice with its 95 % bootstrap interval), with ``dp`` naming its DP training."""
    with_status = any(r.get("status") != "done" for r in rows)
    out = []
    for r in rows:
        words = point_words(r)
        cells: list[dict[str, str]] = [
            _c(words["features"]),
            _c(words["training"]),
            _c(words["aggregation"]),
        ]
        if with_status:
            cells.append(_c(str(r.get("status", ""))))
        cells += [
            _c(_fixed(r.get("ari_scanner"))),
            _with_interval(r, "dice_fedavg"),
            _with_interval(r, "dice_cffl"),
            _with_interval(r, "cffl_minus_fedavg", signed=True),
            _c(_fixed(r.get("advantage_institution"), signed=True)),
            _c(_fixed(r.get("advantage_scanner"), signed=True)),
            _epsilon_cell(r),
            _c(_megabytes(r.get("bytes_per_client_per_round"))),
            _c(_duration(r.get("wall_s"))),
        ]
        out.append({"point": str(r.get("point", "")), "dp": dp_training(r), "cells": cells})
    return out


def table_header(rows: list[dict[str, Any]]) -> list[str]:
    """:data:`TABLE_HEADER`, with the status column when a point was not run."""
    header = list(TABLE_HEADER)
    if any(r.get("status") != "done" for r in rows):
        header.insert(3, "status")
    return header


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
    by_id = {str(r.get("point")): r for r in rows}
    env = template_environment("securefed.sweep")
    html = env.get_template("sweep.html.j2").render(
        meta=jsonable(meta),
        header=table_header(rows),
        rows=table_rows(rows),
        dp_points=sum(1 for r in rows if dp_training(r)),
        reasons=[
            (point_label(r), r["point"], r.get("reason", ""))
            for r in rows
            if r.get("status") != "done"
        ],
        plots={k: drawn.get(k, "") for k in PLOTS},
        front=[point_label(by_id[p]) for p in pareto_front(rows)],
    )
    atomic_write_bytes(out / "report.html", html.encode())
