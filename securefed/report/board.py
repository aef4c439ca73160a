"""The review board's document of a protocol (`securefed protocol render --format text|md|html`):
per stage what leaves each site and in which form, epsilon and the noise derived from it,
aggregation and minimum sizes, what the server learns, who can decrypt what, key fingerprints and
what each party keeps. The protocol hash is on every page. Built from the protocol alone (no data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from securefed import __version__
from securefed.protocol import LoadedProtocol
from securefed.protocol.egress import egress_table, training_egress
from securefed.protocol.render import privacy_verdict
from securefed.report.jinja import template_environment

__all__ = ["BoardDocument", "Section", "board_document", "render_board"]

FORMATS = ("text", "md", "html")


@dataclass(frozen=True)
class Section:
    """One section: an id (HTML anchor), a title, an optional table and notes."""

    id: str
    title: str
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoardDocument:
    study: str
    mode: str
    sha256: str
    sections: tuple[Section, ...] = field(default_factory=tuple)


def _g(value: float | None) -> str:
    if value is None or math.isinf(value):
        return "inf (no DP)"
    return f"{value:.4g}"


def _fp(value: str | None) -> str:
    return value if value is not None else "(not pinned)"


def _identity(loaded: LoadedProtocol) -> Section:
    p = loaded.protocol
    rows = (
        ("study", p.study.name),
        ("description", p.study.description or "-"),
        ("mode", p.study.mode),
        ("protocol hash (sha256 of the canonical form)", loaded.sha256),
        ("schema version", str(p.schema_version)),
        ("approved for securefed", p.governance.securefed_version or "(no version pin)"),
        ("governance key named in the protocol", _fp(p.governance.signing_key)),
        (
            "approved app bundles (FAB sha256)",
            ", ".join(p.governance.approved_apps) or "(none: every SuperNode refuses to run)",
        ),
    )
    notes = (
        "Each site accepts this protocol only when governance keys the site itself trusts signed "
        "this hash (`securefed site verify`, docs/governance.md); a key written here proves "
        "nothing alone.",
    )
    return Section("identity", "Identity", ("field", "value"), rows, notes)


def _parties(loaded: LoadedProtocol) -> Section:
    p = loaded.protocol
    rows: list[tuple[str, ...]] = [
        (p.server.id, "server (coordinator)", "-", _fp(p.server.signing_key),
         _fp(p.server.encryption_key), "-"),
    ]  # fmt: skip
    for s in p.sites:
        rows.append((s.id, "site", str(s.partition_id), _fp(s.signing_key), _fp(s.encryption_key),
                     _fp(s.node_key)))  # fmt: skip
    notes: tuple[str, ...] = ()
    if not p.sites:
        notes = (
            f"Simulation: one site per partition of {p.data.partitioning}.csv, named "
            "site-<partition>; keys are made for the run.",
        )
    held = p.data.held_out_partitions
    if held:
        notes += (f"Institutions {list(held)} are held out: they train nothing and send nothing.",)
    return Section("parties", "Parties and keys",
                   ("party", "role", "partition", "signing key", "encryption key",
                    "SuperNode key"),
                   tuple(rows), notes)  # fmt: skip


def _decryption(loaded: LoadedProtocol) -> Section:
    p = loaded.protocol
    rows = [
        ("feature release (stage features)", "the server only (HPKE to its encryption key)",
         "signed by the site; replay-guarded"),
        ("cluster model (stage cluster-model)", "the addressed site only", "signed by the server"),
    ]  # fmt: skip
    if p.release.mode == "secure-aggregate":
        rows.append(("secure-clustering round vectors", "nobody alone: pairwise masks cancel in "
                     "the sum over all sites", "only the noised sum opens"))  # fmt: skip
    if p.training.aggregation == "secagg+":
        rows.append(("model updates (SecAgg+)", "nobody alone: the server unmasks only the sum, "
                     f"with >= {p.secure_aggregation.reconstruction_threshold} of "
                     f"{p.secure_aggregation.num_shares} shares", "Flower SecAgg+"))  # fmt: skip
    elif p.training.aggregation == "bfv":
        who = p.homomorphic.decryptor or "the training site with the lowest partition id"
        rows.append(
            (
                "model updates (BFV ciphertexts)",
                "every site (all hold the one key); not the server, which only adds them",
                "MAC checked by the decryptor",
            )
        )
        rows.append(
            (
                "round sums (BFV)",
                f"the decryptor, {who}, once per phase and round; it "
                "sends the server the decoded average",
                "MAC: exactly the declared sites",
            )
        )
    else:
        rows.append(("model updates (fedavg)", "the server sees each site's update", "in clear"))
    rows.append(("aggregated models", "every site and the server", "-"))
    return Section("decryption", "Who can decrypt what", ("message", "readable by", "integrity"),
                   tuple(rows))  # fmt: skip


def _budget(loaded: LoadedProtocol) -> Section:
    p = loaded.protocol
    rows: list[tuple[str, ...]] = [
        ("declared budget per site (for the DP stages)", _g(p.privacy.total_epsilon),
         f"{p.privacy.total_delta:g}",
         f"unit {p.privacy.unit}, neighbours {p.privacy.neighbouring}, accountant "
         f"{p.privacy.accountant}"),
    ]  # fmt: skip
    notes: list[str] = [f"Verdict: {privacy_verdict(p)}."]
    rel = p.release
    if rel.mode == "plain":
        rows.append(("features (plain)", "inf (no DP)", "-", "raw values, sealed in transit only"))
    elif rel.mode == "local-dp":
        rows.append(("features (local-dp)", _g(rel.epsilon), f"{rel.delta:g}", _local_dp(loaded)))
    else:
        rows.append(("clustering (secure-aggregate)", _g(p.clustering.secure.epsilon),
                     f"{p.clustering.secure.delta:g}", _secure(loaded)))  # fmt: skip
    dps, cdp = p.training.dp_sgd, p.training.client_dp
    if dps.enabled:
        rows.append(("training (DP-SGD)", _g(dps.epsilon), f"{dps.delta:g}", _dpsgd(loaded)))
    elif cdp.enabled:
        rows.append(("training (client-level DP)", _g(cdp.epsilon), f"{cdp.delta:g}",
                     _client_dp(loaded)))  # fmt: skip
    else:
        rows.append(("training", "inf (no DP training)", "-", "the aggregate model is not DP"))
    notes.append("Every DP release is charged to the site's ledger before any noise is drawn.")
    return Section("budget", "Budget and noise", ("stage", "epsilon", "delta", "noise"),
                   tuple(rows), tuple(notes))  # fmt: skip


def _local_dp(loaded: LoadedProtocol) -> str:
    from securefed.privacy.protection import local_dp_plan

    try:
        plan = local_dp_plan(loaded)
    except Exception as exc:  # noqa: BLE001 - a missing bounds file still renders
        return f"derived from the pinned bounds at release time ({type(exc).__name__})"
    kind = "sigma" if plan.mechanism == "gaussian" else "b"
    return (
        f"discrete {plan.mechanism} on the 2^-12 grid, {kind} = {plan.scale:.4g} per coordinate "
        f"of the unit box, sensitivity {plan.sensitivity:.4g}, {plan.geometry.dimension} values "
        "per patient"
    )


def _secure(loaded: LoadedProtocol) -> str:
    from securefed.clustering.secure import collusion_epsilon, plan_secure_clustering

    p = loaded.protocol
    plan = plan_secure_clustering(p, dimension=1)
    n, t = plan.min_sites, plan.colluding
    worse = collusion_epsilon(plan, n, t + 1, p.privacy.accountant)
    return (
        f"{p.clustering.secure.algorithm}, {len(plan.rounds)} round(s), noise multiplier "
        f"{plan.noise_multiplier:.4g} (distributed discrete Gaussian, shares sigma^2/(n - {t})); "
        f"with {t + 1} colluding site(s) in an aggregate of {n}: epsilon {_g(worse)}"
    )


def _dpsgd(loaded: LoadedProtocol) -> str:
    from securefed.training.dpsgd import plan_dpsgd

    p = loaded.protocol
    try:
        plan = plan_dpsgd(p)
    except Exception as exc:  # noqa: BLE001 - a budget too small still renders
        return f"calibration fails ({exc})"
    sampling = {
        "without-replacement": f"batches of {plan.batch_size} drawn from {plan.population} "
        "patient slots",
        "poisson": f"Poisson sampling at rate {plan.sampling_rate:g}",
        "none": f"batches of {plan.batch_size}, no amplification",
    }[plan.sampling]
    return (
        f"Opacus, clip {p.training.dp_sgd.max_grad_norm:g}, noise multiplier "
        f"{plan.noise_multiplier:.4g}, {plan.steps_per_round} steps in each of {plan.rounds} "
        f"rounds, {sampling} (the same plan at every site, from the protocol alone)"
    )


def _client_dp(loaded: LoadedProtocol) -> str:
    from securefed.training.client_dp import model_values, site_plan

    p = loaded.protocol
    try:
        plan = site_plan(p, model_values(p.training))
    except Exception as exc:  # noqa: BLE001 - a budget too small still renders
        return f"calibration fails ({exc})"
    return (
        f"each site clips its update to {plan.clip:g}, rotates and rounds it and adds a discrete "
        f"Gaussian share; the honest shares of any aggregate (>= {plan.honest} sites) give noise "
        f"multiplier {plan.noise_multiplier:.4g} over {plan.rounds} rounds "
        f"(head room for {plan.n_max} sites, "
        f"{plan.dim} values)"
    )


def _egress(loaded: LoadedProtocol) -> Section:
    rows = tuple((r.stage, r.value, r.to, r.protection, r.epsilon) for r in egress_table(
        loaded.protocol))  # fmt: skip
    notes = tuple(training_egress(loaded.protocol).describe())
    return Section("egress", "What leaves each site", ("stage", "value", "to", "protection",
                                                       "epsilon"), rows, notes)  # fmt: skip


def _aggregation(loaded: LoadedProtocol) -> Section:
    p = loaded.protocol
    t, sa = p.training, p.secure_aggregation
    rows: list[tuple[str, ...]] = [
        ("training aggregation", t.aggregation),
        ("sites per training aggregate (minimum)", str(t.min_sites_per_aggregate)),
        *([("SecAgg+ shares / reconstruction threshold", f"{sa.num_shares} / "
            f"{sa.reconstruction_threshold}")] if t.aggregation == "secagg+" else []),
        *([("BFV precision / decryptor", f"{p.homomorphic.precision_bits} bits / "
            f"{p.homomorphic.decryptor or 'lowest training partition'}")]
          if t.aggregation == "bfv" else []),
        ("round timeout", f"{sa.timeout_s:g} s"),
        ("global rounds / finetuning rounds per cluster", f"{t.global_rounds} / "
         f"{t.finetune_rounds}"),
        ("methods", ", ".join(t.baselines)),
    ]  # fmt: skip
    if p.release.mode == "secure-aggregate":
        sec = p.clustering.secure
        rows.append(("sites per secure-clustering aggregate (minimum)",
                     str(sec.min_sites_per_aggregate)))  # fmt: skip
        rows.append(("sites that may collude with the server", str(sec.max_colluding_sites)))
    return Section("aggregation", "Aggregation and minimum sizes", ("setting", "value"),
                   tuple(rows))  # fmt: skip


def _server_learns(loaded: LoadedProtocol) -> Section:
    p = loaded.protocol
    lines = {
        "plain": "every case's raw radiomic vector (epsilon infinite: the paper's behaviour)",
        "local-dp": "one noised vector per patient, each epsilon-DP, and the sites' ledgers",
        "secure-aggregate": "noised per-cluster sums only (DP), never a case vector",
    }
    notes = [
        f"Features: {lines[p.release.mode]}.",
        "Training: the aggregate of each round"
        + {"dp-sgd": " (DP-SGD)", "client-dp": " (client-level DP)"}.get(
            str(p.training.dp_training), " (not DP)"
        )
        + ("; each site's update in clear" if p.training.aggregation == "fedavg" else "")
        + (
            "; under BFV each site's update is a ciphertext the server cannot open, but any site "
            "could"
            if p.training.aggregation == "bfv"
            else ""
        ),
    ]
    notes += training_egress(p).describe()
    return Section("server", "What the server learns", notes=tuple(notes))


def _retention(loaded: LoadedProtocol) -> Section:
    rows = (
        ("each site", "its images and raw features (never sent), its privacy ledger "
         "(hash-chained), pending releases and its copy of what it released, replay and counter "
         "state, its site configuration"),
        ("server", "collected feature releases, the last ledger head of every site, replay "
         "state, cluster model, training checkpoints (aggregates only), results"),
        ("governance", "its signing key; the signatures (public)"),
    )  # fmt: skip
    notes = (
        "The protocol sets no retention period: each party's own policy decides when these are "
        "deleted; ledgers and replay state must be kept for as long as the study may resume.",
    )
    return Section("retention", "What each party keeps", ("party", "keeps"), rows, notes)


def board_document(loaded: LoadedProtocol) -> BoardDocument:
    """The board's document of ``loaded`` (sections in reading order)."""
    p = loaded.protocol
    sections = (
        _identity(loaded), _parties(loaded), _egress(loaded), _budget(loaded),
        _aggregation(loaded), _server_learns(loaded), _decryption(loaded), _retention(loaded),
    )  # fmt: skip
    return BoardDocument(p.study.name, p.study.mode, loaded.sha256, sections)


def _text(doc: BoardDocument) -> str:
    out = [f"{doc.study} ({doc.mode})  {doc.sha256}", ""]
    for s in doc.sections:
        out += [s.title.upper(), "-" * len(s.title)]
        for row in s.rows:
            out.append("  " + " | ".join(row))
        out += [f"  {n}" for n in s.notes]
        out.append("")
    out.append(f"protocol {doc.sha256}; rendered by securefed {__version__}")
    return "\n".join(out) + "\n"


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _markdown(doc: BoardDocument) -> str:
    out = [f"# Study protocol: {doc.study} ({doc.mode})", "", f"Protocol `{doc.sha256}`", ""]
    for s in doc.sections:
        out += [f"## {s.title}", ""]
        if s.header:
            out.append("| " + " | ".join(s.header) + " |")
            out.append("|" + "---|" * len(s.header))
            out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in s.rows]
            out.append("")
        out += [f"- {n}" for n in s.notes]
        out += ["", f"<sub>protocol {doc.sha256}</sub>", ""]
    out.append(f"Rendered by securefed {__version__}.")
    return "\n".join(out) + "\n"


def _html(doc: BoardDocument) -> str:
    env = template_environment("securefed.report")
    return env.get_template("board.html.j2").render(doc=doc, version=__version__)


def render_board(loaded: LoadedProtocol, fmt: str = "text") -> str:
    """The document in ``fmt`` (text, md or html)."""
    doc = board_document(loaded)
    renderers: dict[str, Any] = {"text": _text, "md": _markdown, "html": _html}
    if fmt not in renderers:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    return str(renderers[fmt](doc))
