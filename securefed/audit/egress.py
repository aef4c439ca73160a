"""The egress census (``securefed audit egress RUNDIR``): everything each site sent, checked
against what its protocol declares.

Input: each site's egress log (``RUNDIR/sites/<site>/egress.jsonl``, written at the site
boundary: securefed.trust.egress_log) and the run's protocol. Every logged field gets the
protection the protocol declares for it (:func:`declare`):

- ``public``: protocol-derived values, identifiers the protocol lists, random ids, status codes;
- ``public-constant``: a value the protocol fixes (a FedAvg weight of 1, a validation count of 0):
  a logged value other than the constant is a finding;
- ``dp``: a DP release, with its epsilon;
- ``secure-aggregate``: SecAgg+ key exchange, encrypted shares and masked vectors; BFV
  ciphertexts and the decryptor's decoded average (``training.aggregation = "bfv"``);
- ``clear``: leaves in clear and is derived from patient data (model updates without SecAgg+,
  train counts, losses, validation Dice, plain features); a finding under a protocol that claims
  a finite epsilon;
- ``declared-clear``: leaves in clear and is derived from the data, accepted by the protocol's
  threat model (the size of an envelope: its number of rows); listed as a warning.

A field with no declaration is a finding. The differential check (``differential=True``,
simulation runs with their keys) reruns each site's feature release twice on its own data and
once on a neighbouring dataset (one patient's features replaced by another patient's): a field
identical across the two identical runs but different on the neighbour is deterministic in the
data, a finding unless it is declared ``dp`` (or ``clear`` under a protocol without a finite
claim). It would have caught the data-derived release id of earlier versions.
Tests: ``tests/study/test_egress_census.py``.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed.errors import ConfigError
from securefed.fileio import write_json_atomic
from securefed.protocol import LoadedProtocol, load_protocol
from securefed.protocol.egress import training_egress
from securefed.trust import accept_unsigned_simulation
from securefed.trust.egress_log import EGRESS_FILE, read_egress_log

__all__ = ["Declaration", "census", "declare", "run_egress_audit"]

SECAGG_RECORD = "secaggplus_configs"  # Flower's RECORD_KEY_CONFIGS (checked in the tests)
HE_MEAN = "securefed.he.mean"  # securefed.federation.he_round.HE_MEAN (checked in the tests)
KEYSIG_RECORD = "securefed.secagg-keysig"  # securefed.federation.secagg_relay (the tests check)
LEDGER_HEAD = "securefed.ledger-head"  # securefed.federation.ledger_heads (the tests check)


@dataclass(frozen=True)
class Declaration:
    """How the protocol declares one field leaves a site."""

    protection: str
    what: str
    epsilon: float | None = None
    expected: Any = None


def _envelope_field(name: str, loaded: LoadedProtocol) -> Declaration | None:
    p = loaded.protocol
    if name in ("kind", "site", "partition_id", "columns", "audit_head", "ledger"):
        return Declaration("public", "protocol identifiers, signed audit head, ledger DP events")
    if name in ("subject_ids", "splits"):
        return Declaration("public", "pseudonymous case ids and splits of the released rows")
    if name.startswith("release."):
        return Declaration("public", "release metadata: protocol-derived values, random id")
    if name == "envelope.bytes":
        return Declaration("declared-clear", "envelope size (its number of rows)")
    if name == "values":
        if p.release.mode == "local-dp":
            return Declaration("dp", f"discrete {p.release.mechanism} release on the grid",
                               epsilon=p.release.epsilon)  # fmt: skip
        return Declaration("clear", "per-case feature vectors (plain: sealed in transit only)")
    if name == "envelope":
        return Declaration("public", "a resent envelope (the same bytes as the first send)")
    return None


def _model_field(name: str, p: Any) -> Declaration | None:
    """A model in a train reply: a BFV ciphertext or the decryptor's decoded average under
    bfv, else the update itself (DP under DP-SGD, clear otherwise)."""
    if p.training.aggregation == "bfv":
        if name.startswith(HE_MEAN + "."):
            what = "the round's decoded average (decryptor only, MAC-verified sum of the sites)"
            return Declaration("secure-aggregate", what)
        return Declaration("secure-aggregate", "BFV-encrypted model update (the server adds "
                           "ciphertexts it holds no key for)")  # fmt: skip
    if name.startswith(HE_MEAN + "."):
        return None
    if p.training.dp_sgd.enabled:
        return Declaration("dp", "DP-SGD model update", epsilon=p.training.dp_sgd.epsilon)
    if p.training.client_dp.enabled:
        what = "client-level DP update (distributed discrete Gaussian share, under SecAgg+)"
        return Declaration("dp", what, epsilon=p.training.client_dp.epsilon)
    return Declaration("clear", "model update (plain FedAvg: the server sees it)")


_PUBLIC_REPLY_FIELDS = {
    "getpropertiesres.properties.": "partition id, protocol hash, budget status (public)",
    KEYSIG_RECORD + ".": "the site's signature over its fresh SecAgg+ public keys (its pinned key)",
    LEDGER_HEAD + ".": "the site's ledger head: entry count and hash of charges that follow the "
    "protocol's public plan, signed",
    "getparametersres.parameters.": "the initial model (seeded, or the pinned public weights; "
    "no data)",
}


_STAGE_REPLY_FIELDS = {
    "getpropertiesres.properties.envelope": Declaration(
        "declared-clear",
        "the sealed feature release as a Flower reply: the bytes of the site's envelope entry "
        "(its fields declared there; its size says the row count)",
    ),
    "getpropertiesres.properties.assigned": Declaration(
        "public-constant", "assign acknowledgement", expected=True
    ),
    "getpropertiesres.properties.masking-key": Declaration(
        "public", "the site's X25519 masking key (secure clustering)"
    ),
    "getpropertiesres.properties.signed": Declaration(
        "public", "the site's signature over its masking key (its pinned key)"
    ),
}


def _reply_field(name: str, message_type: str, loaded: LoadedProtocol) -> Declaration | None:
    p = loaded.protocol
    egress = training_egress(p)
    if name == "group" or name.endswith(".status.code") or name.endswith(".status.message"):
        return Declaration("public", "round id, reply status")
    if name == "error.code":
        # One code of a closed list (securefed.federation.site_rules.ReplyCode), never text;
        # slot-overrun says one bit per round: whether the site's work fit the reply slot.
        return Declaration("public", "the refusal or failure code of an error reply")
    if name.startswith(SECAGG_RECORD + "."):
        what = "SecAgg+ messages: public keys, encrypted shares, masked vector"
        return Declaration("secure-aggregate", what)
    if name in _STAGE_REPLY_FIELDS:  # the study stages over the deployment
        return _STAGE_REPLY_FIELDS[name]
    if name == "getpropertiesres.properties.masked":  # a secure clustering round
        sec = p.clustering.secure
        what = "masked aggregate + discrete Gaussian noise share (only the noised sum opens)"
        return Declaration("secure-aggregate", what, epsilon=sec.epsilon)
    for prefix, what in _PUBLIC_REPLY_FIELDS.items():
        if name.startswith(prefix):
            return Declaration("public", what)
    if name.startswith(("fitres.parameters.", HE_MEAN + ".")):
        return _model_field(name, p)
    if name == "fitres.num_examples.num_examples":
        if egress.weights == "uniform":
            return Declaration("public-constant", "FedAvg weight", expected=1)
        return Declaration("clear", "FedAvg weight = the site's train case count")
    if name.startswith("fitres.metrics."):
        return (
            Declaration("clear", "train metrics (mean train loss)") if egress.train_loss else None
        )
    if name.startswith("evaluateres."):
        return _evaluate_field(name, egress.validation)
    return None


def _evaluate_field(name: str, validation: bool) -> Declaration | None:
    """An evaluation reply's field (validation in training; the test stage over a deployment
    follows the same rule)."""
    if name == "evaluateres.metrics.partition-id":
        return Declaration("public", "partition id")
    if validation:
        return Declaration("clear", "validation or test count, loss and mean Dice")
    if name == "evaluateres.num_examples.num_examples":
        return Declaration("public-constant", "validation count (none sent)", expected=0)
    if name == "evaluateres.loss.loss":
        return Declaration("public-constant", "validation loss (none sent)", expected=0.0)
    return None


def declare(entry: dict[str, Any], name: str, loaded: LoadedProtocol) -> Declaration | None:
    """The protocol's declaration for field ``name`` of an egress-log ``entry`` (None: none)."""
    if entry.get("kind") == "envelope" and entry.get("stage") == "features":
        return _envelope_field(name, loaded)
    if entry.get("kind") == "masked-aggregate":
        if name == "public_key":
            return Declaration("public", "the site's X25519 masking key")
        if name == "masked":
            sec = loaded.protocol.clustering.secure
            what = "masked aggregate + discrete Gaussian noise share (only the noised sum opens)"
            return Declaration("secure-aggregate", what, epsilon=sec.epsilon)
        return None
    if entry.get("kind") == "flower-reply":
        message_type = str(entry.get("stage", "")).rsplit("/", 1)[-1]
        return _reply_field(name, message_type, loaded)
    return None


def _stage_group(entry: dict[str, Any]) -> str:
    stage = str(entry.get("stage", ""))
    return re.sub(r"^clustering/round-\d+$", "clustering/rounds", stage)


def census(logs: dict[str, list[dict[str, Any]]], loaded: LoadedProtocol) -> dict[str, Any]:
    """Fields (per site, stage and field name, with their declared protection and how often they
    left) and findings."""
    finite = loaded.protocol.claims_finite_epsilon
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    findings: list[dict[str, Any]] = []
    warnings: list[str] = []
    for site, entries in sorted(logs.items()):
        for entry in entries:
            if entry.get("protocol") != loaded.sha256:
                findings.append({"site": site, "stage": entry.get("stage"), "field": "-",
                                 "finding": "sent under another protocol"})  # fmt: skip
                continue
            stage = _stage_group(entry)
            for field in entry.get("fields", []):
                name = str(field.get("name"))
                decl = declare(entry, name, loaded)
                key = (site, stage, name)
                row = rows.setdefault(key, {
                    "site": site, "stage": stage, "field": name, "to": entry.get("to"),
                    "protection": decl.protection if decl else "undeclared",
                    "what": decl.what if decl else "", "count": 0,
                    "epsilon": decl.epsilon if decl else None,
                })  # fmt: skip
                row["count"] += 1
                problem = _problem(decl, field, finite)
                if problem:
                    findings.append({"site": site, "stage": stage, "field": name,
                                     "finding": problem})  # fmt: skip
    fields = sorted(rows.values(), key=lambda r: (r["site"], r["stage"], r["field"]))
    declared_clear = {r["field"] for r in fields if r["protection"] == "declared-clear"}
    if declared_clear:
        warnings.append(
            f"leaves in clear by declaration (threat model): {', '.join(sorted(declared_clear))}"
        )
    return {"fields": fields, "findings": _dedupe(findings), "warnings": warnings}


def _problem(decl: Declaration | None, field: dict[str, Any], finite: bool) -> str:
    if decl is None:
        return "undeclared field"
    if decl.protection == "public-constant" and field.get("value") != decl.expected:
        return f"value {field.get('value')!r} where the protocol declares {decl.expected!r}"
    if decl.protection == "clear" and finite:
        return f"{decl.what} in clear under a protocol that claims a finite epsilon"
    return ""


def _dedupe(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts = Counter(tuple(sorted(f.items())) for f in findings)
    return [dict(k) | {"times": n} for k, n in counts.items()]


def differential_features(rundir: Path, loaded: LoadedProtocol) -> dict[str, Any]:
    """Rerun each site's feature release (twice on its data, once on a neighbour) and report the
    fields that are deterministic in the data (simulation runs with their keys only)."""
    if loaded.protocol.release.mode == "secure-aggregate":
        return {"applies": False, "why": "no feature envelope: per-case vectors never leave a "
                "site (the secure clustering's own differential check is open work)"}  # fmt: skip
    from securefed.crypto import load_private_keys, load_public_keys
    from securefed.radiomics.storage import load_table, save_table
    from securefed.radiomics.table import FeatureTable
    from securefed.site.release import release_site_features

    keys = rundir / "keys"
    server_pub = keys / "server.pub.json"
    if not server_pub.is_file():
        raise ConfigError(f"{keys}: the differential check needs a simulation run's keys")
    sites = sorted(p for p in (rundir / "sites").glob("*/features") if p.is_dir())
    tables = {p.parent.name: load_table(p) for p in sites}
    if len(tables) < 2:
        raise ConfigError(f"{rundir}/sites: the differential check needs two sites' features")
    out: dict[str, Any] = {"applies": True, "sites": {}, "findings": []}
    finite = loaded.protocol.claims_finite_epsilon
    names = list(tables)
    for i, site in enumerate(names):
        table, manifest = tables[site]
        donor, _ = tables[names[(i + 1) % len(names)]]
        replaced = table.values.copy()
        replaced[0] = donor.values[0]  # replace-one: another patient's features, same case id
        neighbour = FeatureTable(table.subject_ids, table.partition_ids, table.splits,
                                 table.columns, replaced)  # fmt: skip
        site_keys = load_private_keys(keys / f"{site}.key")
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for j, t in enumerate((table, table, neighbour)):
                featdir = Path(tmp) / f"feat-{j}"
                save_table(t, featdir, manifest)
                state = Path(tmp) / f"state-{j}"
                release_site_features(featdir, accept_unsigned_simulation(loaded), site_keys,
                                      load_public_keys(server_pub),
                                      Path(tmp) / f"out-{j}", state)  # fmt: skip
                entries = read_egress_log(state / EGRESS_FILE)
                runs.append({f["name"]: f.get("value", f.get("digest")) for f in
                             entries[-1]["fields"]})  # fmt: skip
        a, b, c = runs
        deterministic = sorted(k for k in a if a.get(k) == b.get(k) and a.get(k) != c.get(k))
        out["sites"][site] = {"deterministic_in_data": deterministic}
        for name in deterministic:
            decl = _envelope_field(name, loaded)
            ok = decl is not None and (
                decl.protection == "dp" or (decl.protection == "clear" and not finite)
            )
            if not ok:
                out["findings"].append({"site": site, "stage": "features", "field": name,
                                        "finding": "deterministic in the data (same on two "
                                        "identical runs, different on a neighbour) and not "
                                        "declared DP"})  # fmt: skip
    return out


def run_egress_audit(rundir: Path, *, differential: bool = False) -> dict[str, Any]:
    """The census of RUNDIR (and, optionally, the differential check); writes
    ``RUNDIR/audit/egress.json`` and ``egress.png``; returns the document."""
    rundir = Path(rundir)
    proto = rundir / "protocol.toml"
    if not proto.is_file():
        raise ConfigError(f"{rundir}: no protocol.toml (is it a securefed run folder?)")
    loaded = load_protocol(proto)
    logs = {p.parent.name: read_egress_log(p) for p in sorted((rundir / "sites").glob(
        f"*/{EGRESS_FILE}"))}  # fmt: skip
    if not logs:
        raise ConfigError(f"{rundir}/sites: no site egress log ({EGRESS_FILE}); rerun the study "
                          "with this securefed version")  # fmt: skip
    doc: dict[str, Any] = {"kind": "egress-census", "protocol": loaded.sha256,
                           "claims_finite_epsilon": loaded.protocol.claims_finite_epsilon,
                           "sites": sorted(logs), **census(logs, loaded)}  # fmt: skip
    if differential:
        diff = differential_features(rundir, loaded)
        doc["differential"] = diff
        doc["findings"] += diff.get("findings", [])
    out = rundir / "audit"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "egress.json", _finite(doc))
    _plot(doc["fields"], out / "egress.png")
    return doc


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _plot(fields: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["public", "public-constant", "dp", "secure-aggregate", "declared-clear", "clear",
             "undeclared"]  # fmt: skip
    colours = ["#8c8c8c", "#b0b0b0", "#55a868", "#4c72b0", "#dd8452", "#c44e52", "#000000"]
    stages = sorted({f["stage"] for f in fields})
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(stages) + 1.4))
    left = [0] * len(stages)
    for kind, colour in zip(kinds, colours, strict=True):
        counts = [sum(f["count"] for f in fields if f["stage"] == s and f["protection"] == kind)
                  for s in stages]  # fmt: skip
        if any(counts):
            ax.barh(stages, counts, left=left, color=colour, label=kind)
            left = [a + b for a, b in zip(left, counts, strict=True)]
    ax.set_xlabel("fields sent (all sites)")
    ax.set_title("What left the sites, by declared protection", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
