"""``securefed audit report RUNDIR``: the audits of a run in one page,
``RUNDIR/audit/audit.html`` (egress census, feature attacks, membership inference, DP audit,
findings), from the JSON files the other audit commands wrote there. A missing audit is shown
with the command that produces it. Tests: ``tests/study/test_audit_report.py`` (rendered in
headless Chromium)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from securefed import __version__
from securefed.errors import ConfigError
from securefed.fileio import read_json
from securefed.protocol import load_protocol
from securefed.report.jinja import template_environment

__all__ = [
    "audit_findings", "dp_rows", "field_words", "leakage_summary", "metric_words",
    "write_audit_report",
]  # fmt: skip


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return read_json(path) if path.is_file() else None


def audit_findings(
    egress: dict[str, Any] | None, dp: dict[str, Any] | None
) -> list[dict[str, str]]:
    """Every finding of the audits (what ``audit report`` exits 4 on)."""
    out = []
    for f in (egress or {}).get("findings", []):
        field = str(f["field"])
        words = field_words(field)
        named = field if words == field else f"{words} ({field})"
        out.append({"audit": "egress", "where": f"{f['site']} {f['stage']} {named}",
                    "finding": str(f["finding"])})  # fmt: skip
    for m in (dp or {}).get("mechanisms", []):
        if m.get("finding") or m.get("status") == "finding":
            out.append({"audit": "dp", "where": str(m["mechanism"]),
                        "finding": _dp_finding_words(m)})  # fmt: skip
    return out


def _epsilon(value: Any) -> float | None:
    """An epsilon of dp.json as a number (``"inf"`` is infinite); None when absent."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _eps_text(value: Any) -> str:
    """An epsilon as the report writes it: 3 decimals, "infinite", or "not stated"."""
    v = _epsilon(value)
    if v is None:
        return NOT_STATED
    if math.isinf(v):
        return "infinite"
    return f"{v:.3f}"


def _claim_text(value: Any) -> str:
    v = _epsilon(value)
    return NOT_STATED if v is None else f"{v:g}"


def _power_text(value: Any) -> str:
    """A probability in percent; "< 0.1 %" and "> 99.9 %" at the ends."""
    v = _epsilon(value)
    if v is None:
        return NOT_STATED
    if v < 0.001:
        return "< 0.1\u00a0%"
    if v > 0.999:
        return "> 99.9\u00a0%"
    return f"{100 * v:.1f}\u00a0%"


NOT_STATED = "not stated"


def _target_text(dp: dict[str, Any] | None) -> str:
    """The power the audit is sized for (dp.json's ``power.target``), e.g. "95 %"."""
    target = _epsilon(((dp or {}).get("power") or {}).get("target"))
    return NOT_STATED if target is None else f"{100 * target:g} %"


def _dp_finding_words(m: dict[str, Any]) -> str:
    """Why a DP row is a finding: its lower bound, or the epsilon its measured noise implies,
    above the claim."""
    claim = _epsilon(m.get("claimed_epsilon"))
    bound = _epsilon(m.get("lower_bound"))
    words = []
    if bound is not None and claim is not None and bound > claim:
        words.append(f"empirical lower bound {_eps_text(bound)} above the claimed epsilon "
                     f"{_claim_text(claim)}")  # fmt: skip
    check = m.get("noise_check") or {}
    implied = _epsilon(check.get("epsilon_implied"))
    if check.get("finding") and implied is not None:
        words.append(f"the measured noise implies epsilon {_eps_text(implied)}, above the "
                     f"claimed epsilon {_claim_text(claim)}")  # fmt: skip
    return "; ".join(words) or f"above the claimed epsilon {_claim_text(claim)}"


def dp_rows(dp: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The DP audit's rows as the report shows them: the claim, the empirical lower bound, the
    largest epsilon the run could certify, the power against half the noise, the noise check and
    the status in words. A row of an older dp.json without ``status``, ``max_certifiable``,
    ``power_2x`` or ``noise_check`` shows "not stated" there, and its status is never "ok": an
    inconclusive row, or one whose power is unknown, says it certifies nothing."""
    if dp is None:
        return []
    target = _epsilon((dp.get("power") or {}).get("target"))  # old files: none
    out = []
    for m in dp.get("mechanisms", []):
        claim = _epsilon(m.get("claimed_epsilon"))
        best = _epsilon(m.get("max_certifiable"))
        power = _epsilon(m.get("power_2x"))
        check = m.get("noise_check") or None
        status = m.get("status")
        finding = bool(m.get("finding")) or status == "finding"
        if finding:
            status = "finding"
        elif status not in ("ok", "inconclusive"):
            status = "unstated"
        elif status == "ok" and claim is not None and best is not None and claim >= best:
            status = "inconclusive"  # never shown as ok above what the run could certify
        size = m.get("trials")
        if status == "finding":
            words = f"finding: {_dp_finding_words(m)}"
        elif status == "inconclusive":
            words = (f"inconclusive: this run could certify at most {_eps_text(best)}, below "
                     f"the claim {_claim_text(claim)}; no violation found, but this is not a "
                     "pass")  # fmt: skip
        elif status == "ok":
            words = (f"ok: no violation found; the run could certify up to {_eps_text(best)}, "
                     f"above the claim {_claim_text(claim)}")  # fmt: skip
        else:
            words = ("not stated (an older dp.json): no violation found, but the run's power "
                     "and the most it could certify are not recorded, so this is not a pass; "
                     "rerun securefed audit dp")  # fmt: skip
        fd = m.get("float_distinguisher") or {}
        frac = fd.get("impossible_fraction")
        if isinstance(frac, int | float):
            float_text = f"{100 * frac:.1f} %"
        else:
            float_text = "n/a" if "impossible_fraction" in fd else NOT_STATED
        if check is None:
            check_text, check_title, check_bad = NOT_STATED, "", False
        else:
            implied = check.get("epsilon_implied")
            check_bad = bool(check.get("finding"))
            check_text = _eps_text(implied) + (" (above the claim)" if check_bad else "")
            parts = [str(check.get("statistic", "noise"))]
            for key in ("measured", "planned", "lower", "upper"):
                if isinstance(check.get(key), int | float):
                    parts.append(f"{key} {check[key]:.4g}")
            if isinstance(check.get("confidence"), int | float):
                parts.append(f"confidence {100 * check['confidence']:g} %")
            check_title = ", ".join(parts)
        out.append({
            "mechanism": str(m.get("mechanism", "")),
            "description": str(m.get("description", "")),
            "epsilon": _claim_text(claim),
            "delta": _claim_text(m.get("delta")),
            "lower_bound": _eps_text(m.get("lower_bound")),
            "max_certifiable": _eps_text(best),
            "power": _power_text(power),
            "power_low": power is not None and target is not None and power < target,
            "noise_check": check_text,
            "noise_check_title": check_title,
            "noise_check_bad": check_bad,
            "float_distinguisher": float_text,
            "size": f"{size:,} {'canaries' if 'one_run' in m else 'outputs'}"
            + (", quick" if m.get("quick") else "") if isinstance(size, int) else NOT_STATED,
            "status": status,
            "status_words": words,
        })  # fmt: skip
    return out


_REGION_WORDS = {"tc": "tumour core", "wt": "whole tumour", "et": "enhancing tumour",
                 "mean": "mean of the three regions"}  # fmt: skip
_METRIC_WORDS = {"loss": "loss", "train_loss": "mean training loss", "partition-id":
                 "institution (partition) id", "num_val": "case count"}  # fmt: skip
_SECAGG_WORDS = {"pk1": "public keys", "pk2": "public keys", "ctxts": "encrypted shares",
                 "shares": "secret shares", "nids": "node ids", "dsts": "share destinations",
                 "masked_params": "masked update"}  # fmt: skip
_EXACT_FIELDS = {
    "kind": "message kind",
    "site": "site name",
    "partition_id": "institution (partition) id",
    "columns": "feature names",
    "audit_head": "signed head of the site's audit log",
    "ledger": "privacy-ledger events",
    "subject_ids": "pseudonymous case ids",
    "splits": "case splits (train, validation, test)",
    "envelope.bytes": "envelope size",
    "values": "feature values of each case",
    "envelope": "resent envelope",
    "public_key": "masking public key",
    "masked": "masked sum with its noise share",
    "group": "round id",
    "error.code": "error code",
    "fitres.num_examples.num_examples": "training case count (FedAvg weight)",
    "evaluateres.num_examples.num_examples": "validation case count",
    "evaluateres.loss.loss": "validation loss",
}
_PREFIX_FIELDS = (  # (prefix, words): the rest of the name is an array index or a key
    ("release.", "release settings"),
    ("secaggplus_configs.", "SecAgg+ messages"),
    ("getpropertiesres.properties.", "site properties"),
    ("getparametersres.parameters.", "initial model weights"),
    ("fitres.parameters.", "model update (weights)"),
    ("securefed.he.mean.", "decoded average of the round (BFV decryptor)"),
)


def field_words(name: str) -> str:
    """Human words for an egress-log field name (``evaluateres.metrics.dice_et`` ->
    "validation Dice (enhancing tumour)"); an unknown name is returned as it is."""
    if name in _EXACT_FIELDS:
        return _EXACT_FIELDS[name]
    if name.endswith(".status.code"):
        return "reply status code"
    if name.endswith(".status.message"):
        return "reply status message"
    for prefix, phase in (("evaluateres.metrics.", "validation"), ("fitres.metrics.", "training")):
        if name.startswith(prefix):
            key = name[len(prefix) :]
            if key.startswith("dice_") and key[5:] in _REGION_WORDS:
                return f"{phase} Dice ({_REGION_WORDS[key[5:]]})"
            if key == "partition-id":
                return _METRIC_WORDS[key]
            return f"{phase} {_METRIC_WORDS.get(key, key.replace('_', ' '))}"
    for prefix, words in _PREFIX_FIELDS:
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if prefix == "release.":
                return f"{words}: {rest.replace('_', ' ')}"
            if prefix == "secaggplus_configs." and rest in _SECAGG_WORDS:
                return f"{words}: {_SECAGG_WORDS[rest]}"
            if prefix == "getpropertiesres.properties.":
                return f"{words}: {rest.replace('_', ' ').replace('-', ' ')}"
            return words
    return name


def _field_list(fields: list[str], limit: int = 8) -> tuple[str, str]:
    """The fields of a census row in words, and their raw names (for the tooltip). One entry per
    distinct wording, with how many raw fields it covers; wordings of one kind ("SecAgg+ message:
    public keys", "SecAgg+ message: node ids") are listed once under their kind."""
    counts: dict[str, int] = {}
    for f in sorted(fields):
        words = field_words(f)
        counts[words] = counts.get(words, 0) + 1
    kinds: dict[str, list[str]] = {}
    for words, c in counts.items():
        kind, sep, detail = words.partition(": ")
        shown = detail if sep else words
        if c > 1:
            shown += f" ({c} {'arrays' if 'weights' in words else 'fields'})"
        kinds.setdefault(kind if sep else "", []).append(shown)
    parts = [f"{kind}: {', '.join(_short(items, limit, sort=False))}" for kind, items in
             kinds.items() if kind]  # fmt: skip
    plain = kinds.get("", [])
    if plain:
        parts.insert(0, ", ".join(_short(plain, limit, sort=False)))
    return "; ".join(parts), ", ".join(_short(fields, 40))


_METRIC_NAMES = {"auc": "ROC AUC", "r2": "R\u00b2", "ssim": "SSIM", "psnr": "PSNR (dB)"}
_TARGET_WORDS = {"tc_ml": "tumour-core volume", "wt_ml": "whole-tumour volume",
                 "et_ml": "enhancing-tumour volume",
                 "flair 16^3": "FLAIR image at 16\u00b3"}  # fmt: skip


def _fpr_of(metric: str) -> float | None:
    """0.001 for ``tpr@0.001fpr``; None for another metric."""
    if metric.startswith("tpr@") and metric.endswith("fpr"):
        try:
            return float(metric[4:-3])
        except ValueError:
            return None
    return None


def metric_words(metric: str) -> str:
    """``tpr@0.001fpr`` -> "TPR at 0.1% FPR", ``auc`` -> "ROC AUC"."""
    fpr = _fpr_of(metric)
    if fpr is not None:
        return f"TPR at {100 * fpr:g}% FPR"
    return _METRIC_NAMES.get(metric, metric)


def _attack_row(a: dict[str, Any], *, non_members: int | None = None) -> dict[str, Any]:
    """An attack result as the report shows it: readable names, formatted numbers, whether it
    beat chance (its 95 % interval above chance) and, for a TPR at an FPR smaller than one
    non-member in the sample, that it cannot be estimated there."""
    metric = str(a.get("metric", ""))
    fpr = _fpr_of(metric)
    if non_members is None and a.get("n") is not None and a.get("members") is not None:
        non_members = int(a["n"]) - int(a["members"])
    row = {
        "attack": str(a.get("attack", "")).replace("-", " "),
        "target": _TARGET_WORDS.get(str(a.get("target", "")), str(a.get("target", ""))),
        "model": str(a.get("model", "")),
        "metric": metric_words(metric),
        "n": a.get("n", ""),
        "estimable": True,
        "beats_chance": False,
    }
    if fpr is not None and non_members is not None and non_members * fpr < 1:
        smallest = f"{100 / non_members:.3g}%" if non_members else "undefined"
        row |= {"estimable": False, "value": "-", "ci": "cannot be estimated", "chance": "-",
                "why": f"cannot be estimated at {100 * fpr:g}% FPR: {non_members} non-members, "
                f"so the smallest FPR above 0 is {smallest}",
                "needs": math.ceil(1 / fpr)}  # fmt: skip
        return row
    value, chance, ci = a.get("value"), a.get("chance"), a.get("ci") or [None, None]
    row["value"] = _num(value)
    row["chance"] = _num(chance, digits=3)
    row["ci"] = f"{_num(ci[0])} \u2013 {_num(ci[1])}" if ci[0] is not None else "-"
    row["why"] = ""
    if isinstance(ci[0], int | float) and isinstance(chance, int | float):
        row["beats_chance"] = float(ci[0]) > float(chance)
        # how much of the way from chance to a perfect attack (metrics on a 0-1 scale; PSNR last)
        top = 1.0 if metric != "psnr" and float(chance) < 1.0 else None
        gain = float(value) - float(chance) if isinstance(value, int | float) else 0.0
        row["margin"] = gain / (top - float(chance)) if top is not None else 0.0
    return row


def _num(value: Any, digits: int = 3) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-" if value is None else str(value)
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.{digits + 1}f}".rstrip("0")
    return f"{value:.{digits}f}"


def leakage_summary(
    features: dict[str, Any] | None, models: dict[str, Any] | None
) -> dict[str, Any]:
    """What the attacks measured, apart from the claims: how many ran, which beat chance (95 %
    interval above chance; the largest margins first) and whether any attack ran at all."""
    rows = [_attack_row(a) for a in (features or {}).get("attacks", [])]
    rows += [_attack_row(a) for a in (models or {}).get("attacks", [])]
    measured = [r for r in rows if r["estimable"]]
    beat = sorted((r for r in measured if r["beats_chance"]), key=lambda r: -r["margin"])
    return {
        "ran": bool(features is not None or models is not None),
        "features_run": features is not None,
        "models_run": models is not None,
        "attacks": len(measured),
        "beat": [
            f"{r['attack']} ({r['target']}, {r['metric']}) {r['value']} against chance "
            f"{r['chance']}"
            for r in beat[:4]
        ],
        "beat_count": len(beat),
    }


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
        row["field"], row["raw"] = _field_list(row["fields"])
    rows_dp = dp_rows(dp)
    non_members = (models or {}).get("non_members")
    doc = {
        "rundir": str(rundir),
        "protocol": loaded.sha256,
        "release_mode": loaded.protocol.release.mode,
        "claims_finite_epsilon": loaded.protocol.claims_finite_epsilon,
        "egress": egress,
        "egress_rows": sorted(rows.values(), key=lambda r: (r["stage"], r["protection"])),
        "features": features,
        "feature_rows": [_attack_row(a) for a in (features or {}).get("attacks", [])],
        "models": models,
        "model_rows": [
            _attack_row(a, non_members=None if a.get("members") is not None else non_members)
            for a in (models or {}).get("attacks", [])
        ],
        "dp": dp,
        "dp_rows": rows_dp,
        "dp_target": _target_text(dp),
        "dp_unproven": [
            r["mechanism"] for r in rows_dp if r["status"] in ("inconclusive", "unstated")
        ],
        "findings": findings,
        "leakage": leakage_summary(features, models),
    }
    env = template_environment("securefed.audit")
    html = env.get_template("audit.html.j2").render(doc=_Attr.wrap(doc), version=__version__)
    out = folder / "audit.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out, findings


def _short(fields: list[str], limit: int = 8, *, sort: bool = True) -> list[str]:
    """At most ``limit`` field names, then how many more."""
    names = sorted(fields) if sort else list(fields)
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
