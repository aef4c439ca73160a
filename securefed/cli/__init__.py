"""The `securefed` command line: a thin typer app. Each command group lives in one module and
registers itself (securefed/cli/<group>.py: data, protocol, keys, features in radiomics.py,
server, site, ledger, federation, audit; the top-level commands in synth, pretrain, cluster,
study, sweep); no logic lives here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from securefed import __version__
from securefed.cli import audit as _audit
from securefed.cli import cluster as _cluster
from securefed.cli import data as _data
from securefed.cli import federation as _federation
from securefed.cli import keys as _keys
from securefed.cli import ledger as _ledger
from securefed.cli import pilot as _pilot
from securefed.cli import pretrain as _pretrain
from securefed.cli import protocol as _protocol
from securefed.cli import radiomics as _features
from securefed.cli import server as _server
from securefed.cli import site as _site
from securefed.cli import study as _study
from securefed.cli import sweep as _sweep
from securefed.cli import synth as _synth
from securefed.cli._common import console, interrupted, state
from securefed.errors import EXIT_INTERRUPTED

__all__ = ["GLOBAL_FLAGS", "app", "main"]

GLOBAL_FLAGS = ("--quiet", "-q", "--debug")
"""The root options a user may also give after the subcommand (`securefed run ... --quiet`)."""


def _global_flags_first(args: Sequence[str]) -> list[str]:
    """``args`` with every GLOBAL_FLAGS token moved in front of the subcommand (none after a
    ``--``), so that click parses them as the root's options wherever they were typed. No
    subcommand declares these names (tests/cli/test_conventions.py checks)."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def _literal_help(command: click.Command) -> None:
    """Make ``command``'s help texts (and those of its options, arguments and subcommands) print
    as written. Typer renders help as rich markup, where a TOML table name such as ``[grid]`` or
    ``[[sites]]`` reads as a style tag and vanishes; every such bracket is escaped here, once,
    so that the help strings in the source stay plain text (tests/cli/test_help.py checks)."""
    for attr in ("help", "short_help", "epilog"):
        text = getattr(command, attr, None)
        if text:
            setattr(command, attr, escape(text))
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            param.help = escape(text)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _literal_help(sub)


class _RootGroup(TyperGroup):
    """The `securefed` group: help texts print as written (no rich markup), --quiet/--debug
    before or after the subcommand, and Ctrl-C in any command is exit 130 with "interrupted;
    rerun to resume" (commands under handle_errors say it themselves)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _literal_help(self)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _global_flags_first(args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            interrupted()
            raise typer.Exit(EXIT_INTERRUPTED) from exc


app = typer.Typer(
    name="securefed",
    cls=_RootGroup,
    help="Privacy-hardened clustered federated personalization (CFFL) for brain-tumour "
    "segmentation. Exit codes: 0 ok, 1 internal error, 2 user error, 3 security refusal, 4 audit "
    "finding, 5 a sweep point failed, 130 interrupted (rerun to resume).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"securefed {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Only print results and errors (also after the subcommand)."
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Print tracebacks on errors (also after the subcommand)."),
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    state.quiet = quiet
    state.debug = debug


@app.command()
def version() -> None:
    """Print the securefed version (as `securefed --version`)."""
    console.print(f"securefed {__version__}", highlight=False)


for _module in (
    _synth,
    _data,
    _protocol,
    _keys,
    _features,
    _server,
    _site,
    _ledger,
    _pretrain,
    _cluster,
    _study,
    _pilot,
    _sweep,
    _federation,
    _audit,
):
    _module.register(app)


def main() -> None:
    app()
