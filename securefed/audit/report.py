"""``securefed audit report RUNDIR``: the audits of a run in one page,
``RUNDIR/audit/audit.html`` (egress census, feature attacks, membership inference, DP audit,
findings), from the JSON files the other audit commands wrote there. A missing audit is shown
with the command that produces it. Tests: ``tests/study/test_audit_report.py`` (rendered in
headless Chromium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from securefed import __version__
from securefed.errors import ConfigError
from securefed.fileio import read_json
from securefed.protocol import load_protocol
from securefed.report.jinja import template_environment

__all__ = ["audit_findings", "write_audit_report"]


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return read_json(path) if path.is_file() else None


def audit_findings(
    egress: dict[str, Any] | None, dp: dict[str, Any] | None
) -> list[dict[str, str]]:
    """Every finding of the audits (what ``audit report`` exits 4 on)."""
    out = []
    for f in (egress or {}).get("findings", []):
        out.append({"audit": "egress", "where": f"{f['site']} {f['stage']} {f['field']}",
                    "finding": str(f["finding"])})  # fmt: skip
    for m in (dp or {}).get("mechanisms", []):
        if m.get("finding"):
            out.append({"audit": "dp", "where": m["mechanism"],
                        "finding": f"empirical lower bound {m['lower_bound']} above the "
                        f"claimed epsilon {m['claimed_epsilon']}"})  # fmt: skip
    return out


def write_audit_report(rundir: Path) -> tuple[Path, list[dict[str, str]]]:
    """Render ``RUNDIR/audit/audit.html``; returns its path and the findings."""
    rundir = Path(rundir)
    if not (rundir / "protocol.toml").is_file():
        raise ConfigError(f"{rundir}: no protocol.toml (is it a securefed run folder?)")
    loaded = load_protocol(rundir / "protocol.toml")
    folder = rundir / "audit"
    folder.mkdir(parents=True, exist_ok=True)
    egress, features, models, dp = (
        _load(folder, n) for n in ("egress", "features", "models", "dp")
    )
    findings = audit_findings(egress, dp)
    flagged = {(f["site"], f["stage"], f["field"]) for f in (egress or {}).get("findings", [])}
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in (egress or {}).get("fields", []):  # merged over sites, grouped by protection
        key = (r["stage"], r["protection"], r["what"])
        row = rows.setdefault(key, {"stage": r["stage"], "protection": r["protection"],
                                    "what": r["what"], "fields": [], "count": 0,
                                    "finding": False})  # fmt: skip
        if r["field"] not in row["fields"]:
            row["fields"].append(r["field"])
        row["count"] += r["count"]
        row["finding"] |= (r["site"], r["stage"], r["field"]) in flagged
    for row in rows.values():
        row["field"] = ", ".join(_short(row["fields"]))
    if dp is not None:
        for m in dp["mechanisms"]:
            lb = m["lower_bound"]
            m["lower_bound_text"] = lb if isinstance(lb, str) else f"{lb:.3f}"
    doc = {
        "rundir": str(rundir),
        "protocol": loaded.sha256,
        "release_mode": loaded.protocol.release.mode,
        "claims_finite_epsilon": loaded.protocol.claims_finite_epsilon,
        "egress": egress,
        "egress_rows": sorted(rows.values(), key=lambda r: (r["stage"], r["protection"])),
        "features": features,
        "models": models,
        "dp": dp,
        "findings": findings,
    }
    env = template_environment("securefed.audit")
    html = env.get_template("audit.html.j2").render(doc=_Attr.wrap(doc), version=__version__)
    out = folder / "audit.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out, findings


def _short(fields: list[str], limit: int = 8) -> list[str]:
    """At most ``limit`` field names, then how many more."""
    names = sorted(fields)
    return names if len(names) <= limit else [*names[:limit], f"and {len(names) - limit} more"]


class _Attr(dict[str, Any]):
    """A dict whose keys read as attributes in the template (StrictUndefined on a missing key)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    @classmethod
    def wrap(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return cls({k: cls.wrap(v) for k, v in value.items()})
        if isinstance(value, list):
            return [cls.wrap(v) for v in value]
        return value
