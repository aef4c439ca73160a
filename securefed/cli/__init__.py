"""The `securefed` command line: a thin typer app. Each area registers its commands from its own
module (securefed/cli/<area>.py); no logic lives here."""

from __future__ import annotations

from typing import Annotated

import typer

from securefed import __version__
from securefed.cli import audit as _audit
from securefed.cli import cluster as _cluster
from securefed.cli import data as _data
from securefed.cli import federation as _federation
from securefed.cli import keys as _keys
from securefed.cli import pretrain as _pretrain
from securefed.cli import privacy as _privacy
from securefed.cli import protocol as _protocol
from securefed.cli import radiomics as _radiomics
from securefed.cli import site as _site
from securefed.cli import study as _study
from securefed.cli import sweep as _sweep
from securefed.cli import synth as _synth
from securefed.cli import trust as _trust
from securefed.cli._common import console, state

__all__ = ["app", "main"]

app = typer.Typer(
    name="securefed",
    help="Privacy-hardened clustered federated personalization (CFFL) for brain-tumour "
    "segmentation. Exit codes: 0 ok, 1 internal error, 2 user error, 3 security refusal, 4 audit "
    "finding, 5 a sweep point failed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only print results and errors.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Print tracebacks on errors.")] = False,
) -> None:
    state.quiet = quiet
    state.debug = debug


@app.command()
def version() -> None:
    """Print the securefed version."""
    console.print(f"securefed {__version__}")


for _module in (
    _synth,
    _data,
    _protocol,
    _keys,
    _radiomics,
    _site,
    _trust,
    _privacy,
    _pretrain,
    _cluster,
    _study,
    _sweep,
    _federation,
    _audit,
):
    _module.register(app)


def main() -> None:
    app()
