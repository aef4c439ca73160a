"""`securefed protocol ...`: check, render and export the schema of study protocols."""

from __future__ import annotations

import typer

from securefed.cli._common import ProtocolFileArg, console, handle_errors, subgroup
from securefed.protocol import LoadedProtocol

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "protocol", "Check, render, sign and verify study protocols.")
    group.command("check")(check)
    group.command("render")(render)
    group.command("schema")(schema)


@handle_errors
def check(protocol: ProtocolFileArg) -> None:
    """Validate PROTOCOL; print its identity (sha256:<hex>) and a one-screen summary."""
    from securefed.protocol import load_protocol, summary_lines
    from securefed.protocol.pinned import check_pinned_files

    loaded = load_protocol(protocol)
    check_pinned_files(loaded)
    console.print(loaded.sha256, highlight=False)
    for line in summary_lines(loaded)[2:] + _privacy_lines(loaded):
        console.print(line, highlight=False, markup=False)


@handle_errors
def render(protocol: ProtocolFileArg) -> None:
    """Plain summary of PROTOCOL for a governance board (what leaves each site, budgets)."""
    from securefed.protocol import load_protocol, summary_lines

    loaded = load_protocol(protocol)
    for line in summary_lines(loaded) + _privacy_lines(loaded):
        console.print(line, highlight=False, markup=False)


def _privacy_lines(loaded: LoadedProtocol) -> list[str]:
    """Figures the protocol layer cannot compute itself (they need the DP accountant)."""
    from securefed.clustering.secure import collusion_lines

    if loaded.protocol.release.mode == "secure-aggregate":
        return collusion_lines(loaded.protocol)
    return []


@handle_errors
def schema() -> None:
    """Print the JSON Schema of a study protocol (also protocols/schema.json), generated from
    the schema's field descriptions."""
    import sys

    from securefed.protocol.reference import json_schema

    sys.stdout.write(json_schema())
