"""`securefed audit verify|sign`: a party's tamper-evident audit log (securefed.trust.audit_log).

Contract: ``audit verify LOGDIR`` exits 0 printing a summary, or 3 naming the first edited,
removed, reordered or truncated entry, a bad head signature, or spends that do not match the
ledger or exceed the protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, info, subgroup
from securefed.cli.keys import _passphrase

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "audit", "Audit logs: verify a party's log, close a stage.")
    group.command("verify")(verify)
    group.command("sign")(sign)


@handle_errors
def verify(
    logdir: Annotated[Path, typer.Argument(help="Folder holding audit.jsonl.")],
    protocol: Annotated[
        Path | None, typer.Option("--protocol", help="The study protocol the log must be of.")
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option("--ledger", help="The site's ledger folder: spends must match it."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="The party's public key bundle: heads must be signed by it."),
    ] = None,
) -> None:
    """Verify LOGDIR/audit.jsonl: chain, order, signed heads, and spends against the ledger."""
    from securefed.crypto import load_public_keys
    from securefed.trust.audit_log import verify_audit_log

    protocol_hash = total = None
    if protocol is not None:
        from securefed.protocol import load_protocol

        loaded = load_protocol(protocol)
        protocol_hash, total = loaded.sha256, loaded.protocol.privacy.total_epsilon
    spent = releases = None
    if ledger is not None:
        from securefed.privacy.ledger import LEDGER_FILE, read_ledger

        state = read_ledger(ledger / LEDGER_FILE if ledger.is_dir() else ledger)
        spent, releases = state.spent(), set(state.charges)
    signer = load_public_keys(key).signing_fingerprint if key is not None else None
    summary = verify_audit_log(
        logdir, protocol_hash=protocol_hash, total_epsilon=total, ledger_spent=spent,
        ledger_releases=releases, signer=signer,
    )  # fmt: skip
    events = ", ".join(f"{k} {v}" for k, v in sorted(summary.events.items()))
    console.print(
        f"OK {summary.party}: {summary.entries} entries, {summary.heads} signed head(s); {events}",
        highlight=False, markup=False, soft_wrap=True,
    )  # fmt: skip


@handle_errors
def sign(
    logdir: Annotated[Path, typer.Argument(help="Folder holding audit.jsonl.")],
    key: Annotated[Path, typer.Option("--key", help="The party's private key.")],
    protocol: Annotated[Path, typer.Option("--protocol", help="The study protocol.")],
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help="File holding the key passphrase.")
    ] = None,
) -> None:
    """Close a stage: sign the log's head with the party's key (e.g. a site after training)."""
    from securefed.crypto import load_private_keys
    from securefed.protocol import load_protocol
    from securefed.trust.audit_log import AuditLog

    loaded = load_protocol(protocol)
    keys = load_private_keys(key, _passphrase(passphrase_file))
    head = AuditLog(logdir, keys.party_id, loaded.sha256).sign_head(keys)
    info(f"{keys.party_id}: head {head['head']} signed (entry {head['seq']})")
