"""`securefed audit verify|sign|dp`: audit logs and empirical privacy audits.

Contract: ``audit verify LOGDIR`` checks the heads against the signing key the protocol
(``--protocol``) pins for the log's party, or ``--key``, and exits 2 with neither; it exits 0
printing a summary, or 3 naming the first edited, removed, reordered or truncated entry, a bad
head signature or a head signed by another key, or spends that do not match the ledger or exceed
the protocol. ``audit sign LOGDIR --key K --protocol P`` exits 3 and writes nothing when the log
is of another protocol or party. ``audit egress RUNDIR`` writes ``RUNDIR/audit/egress.json`` and
``egress.png`` and exits 0, or 4 when a field left a site undeclared, or in clear and
patient-derived under a protocol that claims a finite epsilon. ``audit dp [RUNDIR] [--out DIR]``
writes ``DIR/dp.json`` (default ``RUNDIR/audit``; shapes in docs/auditing.md) and ``DIR/dp.png``
and exits 0, or 4 when a mechanism's empirical lower bound on epsilon, or the epsilon its
measured noise implies, is above its claim. ``audit features RUNDIR --truth
T`` writes ``RUNDIR/audit/features.json`` (exit 0: attacks measure, no claim bounds them).
``audit report RUNDIR`` writes ``RUNDIR/audit/audit.html`` and exits 4 when any audit there holds
a finding.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from securefed.cli._common import console, handle_errors, info, subgroup
from securefed.cli.keys import _passphrase

if TYPE_CHECKING:
    from securefed.protocol.schema import Protocol

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "audit", "Audits: verify a party's log, close a stage, audit DP.")
    group.command("verify")(verify)
    group.command("sign")(sign)
    group.command("dp")(dp)
    group.command("egress")(egress)
    group.command("features")(features)
    group.command("models")(models)
    group.command("report")(report)


@handle_errors
def verify(
    logdir: Annotated[Path, typer.Argument(help="Folder holding audit.jsonl.")],
    protocol: Annotated[
        Path | None,
        typer.Option(
            "--protocol",
            help="The study protocol the log must be of; its pinned signing key of the log's "
            "party (a listed site's signing_key, or the server's) must have signed every head.",
        ),
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option("--ledger", help="The site's ledger folder: spends must match it."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="The party's public key bundle: heads must be signed by it (needed when the "
            "protocol pins no key for the party).",
        ),
    ] = None,
) -> None:
    """Verify LOGDIR/audit.jsonl: chain, order, heads signed by the party's key (the one the
    protocol pins, or --key), and spends against the ledger. Exit 2 without a key to check
    the heads against."""
    from securefed.trust.audit_log import verify_audit_log

    protocol_hash = total = None
    loaded = None
    if protocol is not None:
        from securefed.protocol import load_protocol

        loaded = load_protocol(protocol)
        protocol_hash, total = loaded.sha256, loaded.protocol.privacy.total_epsilon
    signer = _party_signer(logdir, loaded.protocol if loaded else None, key)
    spent = releases = None
    if ledger is not None:
        from securefed.privacy.ledger import LEDGER_FILE, read_ledger

        state = read_ledger(ledger / LEDGER_FILE if ledger.is_dir() else ledger)
        spent, releases = state.spent(), set(state.charges)
    summary = verify_audit_log(
        logdir, protocol_hash=protocol_hash, total_epsilon=total, ledger_spent=spent,
        ledger_releases=releases, signer=signer,
    )  # fmt: skip
    events = ", ".join(f"{k} {v}" for k, v in sorted(summary.events.items()))
    console.print(
        f"OK {summary.party}: {summary.entries} entries, {summary.heads} signed head(s); {events}",
        highlight=False, markup=False, soft_wrap=True,
    )  # fmt: skip


def _party_signer(logdir: Path, protocol: Protocol | None, key: Path | None) -> str | None:
    """The fingerprint every head of the log must be signed with: the signing key the protocol
    pins for the log's party, or the --key bundle's (both: they must agree). A log re-chained
    and re-signed by a fresh key under the same party name then fails (exit 3). None only when
    the log names no party (verification then says what is wrong with it)."""
    from securefed.crypto import load_public_keys
    from securefed.errors import AuditLogError, ConfigError
    from securefed.trust.audit_log import log_party, pinned_signer

    party = log_party(logdir)
    if party is None:
        return None
    pinned = pinned_signer(protocol, party) if protocol is not None else None
    if key is None:
        if pinned is None:
            where = (
                f"the protocol pins no signing key for {party}"
                if protocol is not None
                else "no key to check its heads against"
            )
            raise ConfigError(
                f"{logdir}: the log of {party}, {where}: pass --key {party}.pub.json (the "
                f"party's public key bundle) or --protocol with the study protocol that pins "
                f"{party}'s signing_key; a log re-signed by any key would verify without one"
            )
        return pinned
    given = load_public_keys(key)
    if given.party_id != party:
        raise AuditLogError(f"{logdir}: the log is {party}'s; --key {key} is {given.party_id}'s")
    if pinned is not None and given.signing_fingerprint != pinned:
        raise AuditLogError(
            f"--key {key} ({given.signing_fingerprint}) is not the signing key the protocol "
            f"pins for {party} ({pinned})"
        )
    return given.signing_fingerprint


@handle_errors
def sign(
    logdir: Annotated[Path, typer.Argument(help="Folder holding audit.jsonl.")],
    key: Annotated[Path, typer.Option("--key", help="The party's private key.")],
    protocol: Annotated[
        Path, typer.Option("--protocol", help="The study protocol the log was written under.")
    ],
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help="File holding the key passphrase.")
    ] = None,
) -> None:
    """Close a stage: sign the log's head with the party's key (e.g. a site after training).
    Exit 3, nothing written, when the log is of another protocol or party, or the protocol pins
    another signing key for the party."""
    from securefed.crypto import load_private_keys
    from securefed.errors import AuditLogError
    from securefed.protocol import load_protocol
    from securefed.trust.audit_log import AuditLog, pinned_signer

    loaded = load_protocol(protocol)
    keys = load_private_keys(key, _passphrase(passphrase_file))
    pinned = pinned_signer(loaded.protocol, keys.party_id)
    if pinned is not None and pinned != keys.public.signing_fingerprint:
        raise AuditLogError(
            f"--key {key}: not the signing key the protocol pins for {keys.party_id} ({pinned}); "
            "nothing written"
        )
    head = AuditLog(logdir, keys.party_id, loaded.sha256).sign_head(keys)
    info(f"{keys.party_id}: head {head['head']} signed (entry {head['seq']})")


@handle_errors
def dp(
    rundir: Annotated[
        Path | None,
        typer.Argument(
            help="A run folder: audit the DP stages its protocol (RUNDIR/protocol.toml) enables, "
            "at their claims; dp.json goes to RUNDIR/audit unless --out is given.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for dp.json and dp.png (required without RUNDIR)."),
    ] = None,
    mechanism: Annotated[
        list[str] | None,
        typer.Option(
            "--mechanism",
            help="feature-gaussian, feature-laplace, clustering-shares, dp-sgd, "
            "dp-sgd-discrete, client-dp (default: these six, or the protocol's with RUNDIR) or "
            "float-laplace (a float sampler the audit must catch); repeatable.",
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            min=2000,
            help="Outputs drawn at each neighbouring input (default: enough to catch half the "
            "noise with 95 % probability, within a cost cap).",
        ),
    ] = None,
    canaries: Annotated[
        int | None,
        typer.Option(
            "--canaries",
            min=100,
            help="Canaries of the one-run DP-SGD audits (default: sized like --trials).",
        ),
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(
            "--epsilon",
            min=0.01,
            max=64.0,
            help="The claim each is calibrated to, without RUNDIR (default 1).",
        ),
    ] = None,
    delta: Annotated[
        float | None,
        typer.Option(
            "--delta",
            min=0.0,
            max=0.01,
            help="Delta of the Gaussian claims, without RUNDIR (default 1e-5).",
        ),
    ] = None,
    confidence: Annotated[
        float, typer.Option("--confidence", help="Clopper-Pearson confidence of each bound.")
    ] = 0.999,
    unsafe_noise_scale: Annotated[
        float,
        typer.Option(
            "--unsafe-noise-scale",
            help="Multiply every mechanism's noise (< 1: under-noised on purpose, to show the "
            "audit's power; never a statement about a release).",
        ),
    ] = 1.0,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="20,000 outputs / 2,000 canaries: a fast audit that certifies less (each row "
            "shows its lower max_certifiable and power; a claim above it is inconclusive).",
        ),
    ] = False,
) -> None:
    """Empirical DP audit of securefed's mechanisms through the code a site runs: worst-case
    neighbouring inputs, a Clopper-Pearson lower bound on epsilon (threshold test, or the
    one-run audit for DP-SGD), the largest epsilon the run could certify, its power against half
    the noise, a noise check through the plan's accounting and Mironov's floating-point
    distinguisher. Exit 4 on a finding; a claim the run cannot certify is inconclusive."""
    from securefed.audit.dp import run_dp_audit
    from securefed.errors import AuditFindingError, ConfigError

    loaded = None
    if rundir is not None:
        from securefed.protocol import load_protocol

        if epsilon is not None or delta is not None:
            raise ConfigError(
                "--epsilon/--delta: with RUNDIR the claims are the run's protocol's; drop them"
            )
        if not (rundir / "protocol.toml").is_file():
            raise ConfigError(f"{rundir}: no protocol.toml (is it a securefed run folder?)")
        loaded = load_protocol(rundir / "protocol.toml")
        out = out if out is not None else rundir / "audit"
    if out is None:
        raise ConfigError("--out is required without RUNDIR (the folder for dp.json)")
    doc = run_dp_audit(
        out, mechanisms=tuple(mechanism) if mechanism else None, trials=trials,
        canaries=canaries, epsilon=1.0 if epsilon is None else epsilon,
        delta=1e-5 if delta is None else delta, noise_scale=unsafe_noise_scale,
        confidence=confidence, quick=quick, protocol=loaded, progress=info,
    )  # fmt: skip
    if not doc["mechanisms"]:
        info("the protocol enables no DP stage: nothing to audit")
    for row in doc["mechanisms"]:
        check = row["noise_check"]
        size = "canaries" if "one_run" in row else "trials"
        console.print(
            f"{row['mechanism']}: claimed epsilon {row['claimed_epsilon']:g}, empirical lower "
            f"bound {row['lower_bound']:.3g}, certifiable up to {row['max_certifiable']:.3g}, "
            f"power against half the noise {row['power_2x']:.0%}; noise check: epsilon "
            f"{check['epsilon_implied']:.3g} for the measured noise ({row['trials']} {size}, "
            f"float distinguisher "
            f"{_fraction(row['float_distinguisher']['impossible_fraction'])}"
            f"{', quick' if row['quick'] else ''}) {row['status'].upper()}",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
    console.print(str(out / "dp.json"), highlight=False)
    if doc["findings"]:
        raise AuditFindingError(
            f"empirical epsilon above the claim for {', '.join(doc['findings'])} (see "
            f"{out / 'dp.json'})"
        )


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


@handle_errors
def egress(
    rundir: Annotated[Path, typer.Argument(help="A securefed run folder (RUNDIR).")],
    differential: Annotated[
        bool,
        typer.Option(
            "--differential",
            help="Also rerun each site's feature release twice on its data and once on a "
            "neighbour (simulation runs with their keys): fields deterministic in the data "
            "must be declared DP.",
        ),
    ] = False,
) -> None:
    """Egress census: every field each site sent (its egress log), with the protection the
    protocol declares for it. Exit 4 on a finding."""
    from securefed.audit.egress import run_egress_audit
    from securefed.errors import AuditFindingError

    doc = run_egress_audit(rundir, differential=differential)
    by: dict[str, int] = {}
    for row in doc["fields"]:
        by[row["protection"]] = by.get(row["protection"], 0) + 1
    info(f"{len(doc['sites'])} site(s), {len(doc['fields'])} field(s) by declared protection: "
         + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))  # fmt: skip
    for warning in doc["warnings"]:
        info(f"warning: {warning}")
    for f in doc["findings"][:20]:
        console.print(f"FINDING {f['site']} {f['stage']} {f['field']}: {f['finding']}",
                      highlight=False, markup=False)  # fmt: skip
    console.print(str(Path(rundir) / "audit" / "egress.json"), highlight=False)
    if doc["findings"]:
        raise AuditFindingError(
            f"{len(doc['findings'])} egress finding(s) (see {Path(rundir) / 'audit/egress.json'})"
        )


@handle_errors
def features(
    rundir: Annotated[Path, typer.Argument(help="A securefed run folder (RUNDIR).")],
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="truth.csv of a synthetic federation (scanner and tumour "
            "volume attacks); without it, institutions from the partition file.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The study's images: also run the reconstruction attack."),
    ] = None,
) -> None:
    """Attacks on the features the server holds: scanner, institution and attribute inference,
    linkage, reconstruction; each with its chance baseline and a 95 % interval. On real data
    (no --truth) the institution attack uses the partition file and the scanner and volume
    attacks are reported as not applicable."""
    from securefed.audit.features import run_feature_attacks

    doc = run_feature_attacks(rundir, truth, data=data)
    for a in doc["attacks"]:
        lo, hi = a["ci"]
        console.print(
            f"{a['attack']} {a['target']}: {a['metric']} {a['value']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"(chance {a['chance']:.3f}, n {a['n']})", highlight=False, markup=False,
        )  # fmt: skip
    for na in doc["not_applicable"]:
        info(f"{na['attack']}: not applicable: {na['why']}")
    console.print(str(Path(rundir) / "audit" / "features.json"), highlight=False)


@handle_errors
def report(
    rundir: Annotated[Path, typer.Argument(help="A securefed run folder (RUNDIR).")],
) -> None:
    """Gather the run's audits (RUNDIR/audit/*.json) into RUNDIR/audit/audit.html. Exit 4 when
    any of them holds a finding."""
    from securefed.audit.report import write_audit_report
    from securefed.errors import AuditFindingError

    path, findings = write_audit_report(rundir)
    console.print(str(path), highlight=False)
    if findings:
        raise AuditFindingError(f"{len(findings)} audit finding(s); see {path}")


@handle_errors
def models(
    rundir: Annotated[Path, typer.Argument(help="A securefed run folder (RUNDIR).")],
    truth: Annotated[
        Path | None, typer.Option("--truth", help="truth.csv: members per scanner in the JSON.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="The study's images (required).")
    ] = None,
    references: Annotated[
        int, typer.Option("--references", min=2, max=64, help="Reference models to train.")
    ] = 4,
    reference_steps: Annotated[
        int | None,
        typer.Option(
            "--reference-steps",
            min=1,
            help="Steps per reference model (default: global_rounds x local_steps).",
        ),
    ] = None,
    update_crops: Annotated[
        int,
        typer.Option(
            "--update-crops",
            min=0,
            max=64,
            help="Training crops per case gradient in the attack on one site's update (0: skip).",
        ),
    ] = 4,
) -> None:
    """Membership inference on the FedAvg and CFFL models (a loss-threshold attack and a
    reference-model attack, offline LiRA) and on one site's update (plain FedAvg against the
    SecAgg+ aggregate): AUC and TPR at 1 % and 0.1 % FPR with intervals."""
    from securefed.audit.models import run_model_attacks
    from securefed.errors import ConfigError

    if data is None:
        raise ConfigError("--data is required: the study's images (each case's loss)")
    doc = run_model_attacks(rundir, data, references=references, reference_steps=reference_steps,
                            truth=truth, progress=info, update_crops=update_crops)  # fmt: skip
    for a in doc["attacks"]:
        lo, hi = a["ci"]
        console.print(f"{a['attack']} {a['target']} / {a['model']}: {a['metric']} {a['value']:.3f} "
                      f"[{lo:.3f}, {hi:.3f}] (chance {a['chance']:g})", highlight=False,
                      markup=False)  # fmt: skip
    console.print(str(Path(rundir) / "audit" / "models.json"), highlight=False)
