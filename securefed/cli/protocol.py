"""`securefed protocol ...`: check and render study protocols."""

from __future__ import annotations

from pathlib import Path

import typer

from securefed.cli._common import console, handle_errors, subgroup

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "protocol", "Check, render, sign and verify study protocols.")
    group.command("check")(check)
    group.command("render")(render)


@handle_errors
def check(file: Path = typer.Argument(..., help="Protocol TOML file.")) -> None:
    """Validate FILE; print its identity (sha256:<hex>) and a one-screen summary."""
    from securefed.protocol import load_protocol, summary_lines

    loaded = load_protocol(file)
    console.print(loaded.sha256, highlight=False)
    for line in summary_lines(loaded)[2:]:
        console.print(line, highlight=False, markup=False)


@handle_errors
def render(file: Path = typer.Argument(..., help="Protocol TOML file.")) -> None:
    """Plain summary of FILE for a governance board (what leaves each site, budgets)."""
    from securefed.protocol import load_protocol, summary_lines

    for line in summary_lines(load_protocol(file)):
        console.print(line, highlight=False, markup=False)
