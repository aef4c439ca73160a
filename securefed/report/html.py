"""report.html: one self-contained page (plots embedded) from which a person understands a run."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from securefed.fileio import jsonable
from securefed.report.plots import (
    REGIONS,
    plot_cffl_gain,
    plot_dice_by_method,
    plot_training_curves,
)

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
.note{color:#555;font-size:.92em}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
code{background:#f5f5f5;padding:0 .2em}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _methods_table(methods: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, res in methods.items():
        mean = res.get("mean") or {}
        hd = res.get("hd95") or {}
        rows.append(
            [name + ("" if res.get("private", True) else " (non-private)")]
            + [mean.get(r) for r in REGIONS]
            + [mean.get("mean")]
            + [hd.get(r) for r in REGIONS]
            + [res.get("n_cases")]
        )
    header = ["method", "Dice TC", "Dice WT", "Dice ET", "mean", "HD95 TC", "HD95 WT", "HD95 ET"]
    return _table(header + ["cases"], rows)


def write_report(rundir: Path, results: dict[str, Any]) -> Path:
    """Write RUNDIR/report.html (and its plots under RUNDIR/plots/) from ``results``."""
    results = jsonable(results)
    plots = rundir / "plots"
    seg = results.get("segmentation") or {}
    methods = seg.get("methods") or {}
    parts: list[str] = []
    proto = results.get("protocol", {})
    parts.append(f"<h1>securefed study: {html.escape(str(proto.get('name', '')))}</h1>")
    parts.append(
        f"<p class='note'>protocol <code>{html.escape(str(proto.get('sha256', '')))}</code>, "
        f"mode {html.escape(str(proto.get('mode', '')))}, feature release "
        f"<b>{html.escape(str(proto.get('release_mode', '')))}</b>; securefed "
        f"{html.escape(str(results.get('securefed_version', '')))}, "
        f"{html.escape(str(results.get('created_at', '')))}</p>"
    )
    for warning in results.get("warnings", []):
        parts.append(f"<p class='warn'>{html.escape(str(warning))}</p>")

    data = results.get("data") or {}
    parts.append("<h2>Federation</h2>")
    sites = data.get("sites") or []
    if sites:
        parts.append(
            _table(
                ["site", "institution", "train", "val", "test", "role"],
                [
                    [s["site"], s["partition_id"], s["train"], s["val"], s["test"], s.get("role")]
                    for s in sites
                ],
            )
        )
    excluded = data.get("excluded") or []
    if excluded:
        parts.append(f"<p class='warn'>{len(excluded)} case(s) excluded:</p>")
        parts.append(_table(["case", "problem"], [[e["case"], e["problem"]] for e in excluded]))

    clu = results.get("clustering") or {}
    if clu:
        parts.append("<h2>Clustering</h2>")
        parts.append(
            f"<p>{html.escape(str(clu.get('algorithm', '')))} with k = {clu.get('k')} "
            f"({html.escape(str(clu.get('k_selection', '')))}).</p>"
        )
        scores = (clu.get("selection") or {}).get("scores") or {}
        if scores:
            parts.append(_table(["k", "score"], [[k, v] for k, v in scores.items()]))
        quality = clu.get("quality") or {}
        if quality:
            parts.append("<p>Agreement with the synthetic ground truth (--truth):</p>")
            parts.append(_table(["measure", "value"], [[k, v] for k, v in quality.items()]))
        members = clu.get("cluster_sites") or {}
        if members:
            parts.append(
                _table(
                    ["cluster", "cases", "sites"],
                    [
                        [c, (clu.get("cluster_sizes") or {}).get(c), ", ".join(map(str, s))]
                        for c, s in members.items()
                    ],
                )
            )
        for rel in clu.get("plots", []):
            parts.append(_img(rundir / rel, rel))

    if methods:
        parts.append("<h2>Segmentation (test cases)</h2>")
        parts.append(_methods_table(methods))
        parts.append(
            "<p class='note'>Dice with the paper's empty rule (empty truth and empty prediction "
            "= 1, empty truth with any prediction = 0); HD95 in mm, median over cases where it is "
            "defined. Non-private methods pool data and exist only in simulation.</p>"
        )
        parts.append(_img(plot_dice_by_method(methods, plots / "dice_by_method.png"), "Dice"))
        fallbacks = seg.get("fallbacks") or []
        gain = plot_cffl_gain(
            methods, plots / "cffl_gain.png", fallback=[fb["cluster"] for fb in fallbacks]
        )
        if gain is not None:
            parts.append("<h3>Gain of CFFL over FedAvg per cluster</h3>")
            parts.append(_img(gain, "CFFL gain"))
        for fb in fallbacks:
            parts.append(
                f"<p class='warn'>cluster {fb['cluster']}: {html.escape(fb['reason'])}</p>"
            )
        unseen = seg.get("unseen") or {}
        if unseen:
            parts.append("<h3>Unseen institutions (took no part in training)</h3>")
            parts.append(_methods_table(unseen))
    curves = results.get("training_curves") or {}
    if curves:
        parts.append("<h2>Training curves</h2>")
        parts.append(_img(plot_training_curves(curves, plots / "training_curves.png"), "curves"))

    privacy = results.get("privacy") or {}
    if privacy:
        parts.append("<h2>Privacy spent per site</h2>")
        per_site = privacy.get("per_site") or {}
        parts.append(
            _table(
                ["site", "epsilon", "delta", "releases", "budget epsilon"],
                [
                    [
                        s,
                        v.get("epsilon"),
                        v.get("delta"),
                        v.get("releases"),
                        privacy.get("total_epsilon"),
                    ]
                    for s, v in per_site.items()
                ],
            )
        )
        for line in privacy.get("notes", []):
            parts.append(f"<p class='note'>{html.escape(str(line))}</p>")
    timings = results.get("timings") or {}
    if timings:
        parts.append("<h2>Timings</h2>")
        parts.append(_table(["stage", "seconds"], [[k, v] for k, v in timings.items()]))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>securefed report</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    out = rundir / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
