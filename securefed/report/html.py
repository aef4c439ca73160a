"""report.html: one self-contained page (plots embedded) from which a person understands a run,
rendered from the Jinja2 template ``templates/report.html.j2`` (autoescaped)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from jinja2 import Environment

from securefed.fileio import atomic_write_bytes, jsonable
from securefed.report.jinja import template_environment
from securefed.report.plots import (
    MIN_INTERVAL_CASES,
    REGIONS,
    plot_cffl_gain,
    plot_dice_by_method,
    plot_epsilon_curves,
    plot_training_curves,
)

__all__ = ["MIN_INTERVAL_CASES", "render_report", "write_report"]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):  # a delta such as 1e-05, not "0.000"
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def _interval(ci: Any, n: Any) -> str:
    """The 95 % interval of a mean over ``n`` cases as text ("n too small" below
    ``MIN_INTERVAL_CASES``; empty when the results hold none)."""
    if isinstance(n, int) and n < MIN_INTERVAL_CASES:
        return "n too small"
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _method_rows(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: its name, number of test cases, Dice per region and overall (each
    with its interval) and HD95 per region."""
    rows = []
    for name, res in methods.items():
        mean = res.get("mean") or {}
        cis = res.get("ci") or {}
        hd = res.get("hd95") or {}
        n = res.get("n_cases")
        rows.append({
            "name": name + ("" if res.get("private", True) else " (non-private)"),
            "n": n,
            "dice": [(mean.get(r), _interval(cis.get(r), n)) for r in (*REGIONS, "mean")],
            "hd95": [hd.get(r) for r in REGIONS],
        })  # fmt: skip
    return rows


_CRITERIA = {
    "bic": (
        "BIC (lower is better)",
        "Bayesian information criterion of the Gaussian mixture with k components fitted to the "
        "train and validation cases' features (scaled, then reduced by PCA): lower is better, "
        "and the k with the lowest BIC was chosen.",
    ),
    "silhouette": (
        "silhouette (higher is better)",
        "Mean silhouette coefficient (-1 to 1) of the k clusters of the train and validation "
        "cases' features (scaled, then reduced by PCA): higher is better, and the k with the "
        "highest was chosen.",
    ),
}


def _k_selection(clu: dict[str, Any]) -> dict[str, Any]:
    """The clustering line, the k table (criterion named, chosen k marked) and its note."""
    criterion = str(clu.get("k_selection") or (clu.get("selection") or {}).get("criterion") or "")
    scores = (clu.get("selection") or {}).get("scores") or {}
    k = clu.get("k")
    algorithm = str(clu.get("algorithm", "")).upper()
    header, note = _CRITERIA.get(criterion, ("score", ""))
    if criterion in _CRITERIA and scores:
        ks = list(scores)
        chosen_by = header.split()[0]
        line = f"{algorithm} with k = {k}, chosen by {chosen_by} among k = {ks[0]} to {ks[-1]}."
    elif criterion == "fixed":
        line = f"{algorithm} with k = {k}, fixed by the protocol."
    elif criterion == "secure":
        line = f"{algorithm} with k = {k} (secure-aggregate clustering: k set by the protocol)."
    else:
        line = f"{algorithm} with k = {k} ({criterion})."
    rows = [[kk, v, "chosen" if str(kk) == str(k) else ""] for kk, v in scores.items()]
    return {"line": line, "header": ["k", header, ""], "rows": rows, "note": note}


def _measure(name: str) -> str:
    """ari_scanner -> "adjusted Rand index (ARI), clusters vs scanner"."""
    words = {"ari": "adjusted Rand index (ARI)", "nmi": "normalized mutual information (NMI)"}
    kind, _, group = name.partition("_")
    return f"{words[kind]}, clusters vs {group}" if kind in words and group else name


def _environment() -> Environment:
    return template_environment(
        "securefed.report", trim_blocks=True, filters={"fmt": _fmt, "method_rows": _method_rows}
    )


def _number(value: Any) -> float:
    """A float from results.json (infinity may be stored as a string or null)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


def _data_uri(path: Path | None) -> str | None:
    if path is None or not Path(path).exists():
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _context(rundir: Path, results: dict[str, Any]) -> dict[str, Any]:
    plots = rundir / "plots"
    seg = results.get("segmentation") or {}
    methods = seg.get("methods") or {}
    fallbacks = seg.get("fallbacks") or []
    data = results.get("data") or {}
    clu = results.get("clustering") or {}
    privacy = results.get("privacy") or {}
    sizes = clu.get("cluster_sizes") or {}
    gain = (
        plot_cffl_gain(methods, plots / "cffl_gain.png", fallback=[f["cluster"] for f in fallbacks])
        if methods
        else None
    )
    curves = results.get("training_curves") or {}
    return {
        "protocol": {
            k: (results.get("protocol") or {}).get(k, "")
            for k in ("name", "sha256", "mode", "release_mode", "aggregation")
        },
        "version": results.get("securefed_version", ""),
        "created_at": results.get("created_at", ""),
        "warnings": results.get("warnings", []),
        "sites": [
            [s["site"], s["partition_id"], s["train"], s["val"], s["test"], s.get("role")]
            for s in data.get("sites") or []
        ],
        "excluded": [[e["case"], e["problem"]] for e in data.get("excluded") or []],
        "clustering": bool(clu),
        "k_selection": _k_selection(clu),
        "quality": [[_measure(k), v] for k, v in (clu.get("quality") or {}).items()],
        "cluster_rows": [
            [c, sizes.get(c), ", ".join(map(str, s))]
            for c, s in (clu.get("cluster_sites") or {}).items()
        ],
        "clustering_images": [(_data_uri(rundir / rel), rel) for rel in clu.get("plots", [])],
        "methods": methods,
        "unseen": seg.get("unseen") or {},
        "fallbacks": fallbacks,
        "dice_plot": _data_uri(plot_dice_by_method(methods, plots / "dice_by_method.png"))
        if methods
        else None,
        "gain_plot": _data_uri(gain),
        "curves_plot": _data_uri(plot_training_curves(curves, plots / "training_curves.png"))
        if curves
        else None,
        "epsilon_plot": _data_uri(
            plot_epsilon_curves(
                privacy.get("epsilon_curves") or {},
                _number(privacy.get("total_epsilon")),
                plots / "epsilon.png",
            )
        ),
        "privacy": bool(privacy),
        "privacy_notes": privacy.get("notes", []),
        "privacy_rows": [
            [
                s,
                v.get("epsilon"),
                v.get("delta"),
                v.get("releases"),
                v.get("overall_epsilon"),
                privacy.get("total_epsilon"),
            ]  # fmt: skip
            for s, v in (privacy.get("per_site") or {}).items()
        ],
        "egress_rows": [
            [r.get("stage"), r.get("value"), r.get("to"), r.get("protection"), r.get("epsilon")]
            for r in privacy.get("egress") or []
        ],
        "wire_rows": _wire_rows(results.get("wire") or {}),
        "scanner_rows": _scanner_rows(methods),
        "overlays": [
            (
                _data_uri(rundir / o["plot"]),
                f"{o['subject_id']} ({o['site']}, cluster {o['cluster']})",
            )
            for o in seg.get("overlays") or []
            if (rundir / str(o.get("plot", ""))).is_file()
        ],  # fmt: skip
        "timings": [[k, v] for k, v in (results.get("timings") or {}).items()],
        "min_interval_cases": MIN_INTERVAL_CASES,
    }


def _scanner_rows(methods: dict[str, Any]) -> dict[str, Any]:
    """Mean test Dice per scanner group and method, each cell ``(mean, below)`` with below its
    95 % bootstrap interval and n ("n too small" under ``MIN_INTERVAL_CASES`` cases)."""
    shown = [m for m in ("local", "fedavg", "cffl") if methods.get(m, {}).get("per_scanner")]
    groups = sorted({g for m in shown for g in methods[m]["per_scanner"]})
    rows = []
    for g in groups:
        cells: list[tuple[str, str]] = []
        for m in shown:
            e = methods[m]["per_scanner"].get(g)
            if not e or e.get("mean") is None:
                cells.append(("-", ""))
                continue
            n = e.get("n")
            interval = _interval(e.get("ci"), n)
            below = f"n={n} ({interval})" if interval == "n too small" else f"{interval} n={n}"
            cells.append((f"{e['mean']:.3f}", below.strip()))
        rows.append([g, cells])
    return {"methods": shown, "rows": rows}


def _wire_rows(wire: dict[str, Any]) -> list[list[Any]]:
    """Measured upload per site and round, per phase and overall (results.json "wire")."""
    if not wire.get("bytes_per_client_per_round"):
        return []
    fp32 = wire.get("fp32_bytes") or 0

    mode = str(wire.get("aggregation"))
    if wire.get("training_privacy") == "client-dp":
        mode += " + client-level DP"
    sent = wire.get("sent_values")
    if sent and fp32 and 4 * int(sent) < fp32:  # training.trainable: the trained arrays only
        mode += f", the {int(sent):,} trained values only"

    def row(name: str, size: Any) -> list[Any]:
        ratio = f"{size / fp32:.2f}x" if fp32 and size else "-"
        return [name, mode, f"{size / 1e6:.3f} MB", ratio]

    rows = [row(p, v) for p, v in (wire.get("per_phase") or {}).items()]
    rows.append(row("all phases", wire["bytes_per_client_per_round"]))
    if wire.get("decryptor_bytes_per_round"):
        rows.append(["decryptor, per round (the decoded average)", wire.get("aggregation"),
                     f"{wire['decryptor_bytes_per_round'] / 1e6:.3f} MB", "-"])  # fmt: skip
    return rows


def render_report(rundir: Path, results: dict[str, Any]) -> str:
    """The HTML of the report (writes its plots under RUNDIR/plots/)."""
    template = _environment().get_template("report.html.j2")
    return template.render(**_context(Path(rundir), jsonable(results)))


def write_report(rundir: Path, results: dict[str, Any]) -> Path:
    """Write RUNDIR/report.html (and its plots under RUNDIR/plots/) from ``results``."""
    out = Path(rundir) / "report.html"
    atomic_write_bytes(out, render_report(rundir, results).encode("utf-8"), mode=0o644)
    return out
