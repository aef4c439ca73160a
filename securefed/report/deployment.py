"""report.html of a study run over the deployment (``securefed federation run``, ``securefed
pilot``): one self-contained page from its results.json, rendered from
``templates/deployment.html.j2`` (autoescaped). It shows only what reached the coordinator: the
sites' pooled test means (no per-case value, so no interval), the clustering of the released
rows, the phases, the stage timings, the parties' audit-log verdicts (pilot) and the protocol's
egress table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from securefed.fileio import atomic_write_bytes
from securefed.report.jinja import template_environment

__all__ = ["render_deployment_report", "write_deployment_report"]

_REGIONS = ("dice_tc", "dice_wt", "dice_et", "dice_mean")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _pooled_rows(methods: dict[str, Any], group: str) -> list[list[Any]]:
    rows = []
    for name, res in methods.items():
        pooled = res.get(group) or {}
        if not pooled.get("num_test"):
            continue
        rows.append([name, pooled["num_test"], pooled.get("sites"),
                     *[pooled.get(k) for k in _REGIONS]])  # fmt: skip
    return rows


def _clustering_line(clustering: dict[str, Any]) -> str:
    secure = clustering.get("secure")
    if secure:
        rounds = len(secure.get("rounds", []))
        return (
            f"secure-aggregate release: k = {clustering.get('k')} by the federated DP "
            f"clustering ({secure.get('algorithm')}, {rounds} masked rounds, epsilon "
            f"{secure.get('epsilon')} per patient); no per-case vector left a site and each "
            "site assigned its own cases, so no cluster size is known here"
        )
    return (f"{clustering.get('mode', '?')} release; k = {clustering.get('k')} "
            f"({clustering.get('k_selection')}), fitted on {clustering.get('fit_cases')} "
            "released train/val rows")  # fmt: skip


def render_deployment_report(
    results: dict[str, Any], egress: list[dict[str, str]], name: str, release_mode: str,
    aggregation: str,
) -> str:  # fmt: skip
    """The page's HTML."""
    env = template_environment("securefed.report", filters={"fmt": _fmt})
    methods = results.get("methods", {})
    clustering = results.get("clustering", {})
    phases = results.get("phases", {})
    finetuned = phases.get("clusters", {})
    clusters = [
        [c, size, ", ".join(str(s) for s in finetuned.get(c, {}).get("sites", [])) or "–",
         finetuned.get(c, {}).get("status", "global model")]
        for c, size in sorted(clustering.get("cluster_sizes", {}).items())
    ]  # fmt: skip
    g = phases.get("global", {})
    phase_rows = [["global", g.get("best_round"), g.get("best_score"), g.get("weights")]]
    phase_rows += [[f"cluster {c}", info.get("best_round", "–"), info.get("best_score"),
                    info.get("weights")] for c, info in finetuned.items()]  # fmt: skip
    warnings = []
    if not any(row for row in _pooled_rows(methods, "test")):
        warnings.append("No test metric reached the coordinator: the sites' protocol declares "
                        "none (a protocol that claims a finite epsilon).")  # fmt: skip
    html = env.get_template("deployment.html.j2").render(
        name=name, protocol=results.get("protocol"), release_mode=release_mode,
        aggregation=aggregation, version=results.get("securefed"),
        finished=results.get("finished"), warnings=warnings,
        evaluation_release=results.get("evaluation_release", ""),
        methods=_pooled_rows(methods, "test"), unseen=_pooled_rows(methods, "unseen"),
        per_site=[[m, r.get("site"), "all" if r["cluster"] < 0 else r["cluster"], r["num_test"],
                   r.get("dice_mean")]
                  for m, res in methods.items() for r in res.get("per_site", [])
                  if r["num_test"] > 0],  # a site without test cases of a cluster: no row
        clustering_line=_clustering_line(clustering),
        clusters=clusters, phases=phase_rows,
        stages=[[k, f"{v:.0f}"] for k, v in results.get("stages", {}).items()],  # as they ran
        audit=sorted(results.get("audit_logs", {}).items()),
        egress=[[r["stage"], r["value"], r["to"], r["protection"], r["epsilon"]] for r in egress],
    )  # fmt: skip
    return str(html)


def write_deployment_report(
    path: Path, results: dict[str, Any], egress: list[dict[str, str]], name: str,
    release_mode: str, aggregation: str,
) -> Path:  # fmt: skip
    """Write the page atomically; returns its path."""
    html = render_deployment_report(results, egress, name, release_mode, aggregation)
    atomic_write_bytes(Path(path), html.encode("utf-8"))
    return Path(path)
