"""Shared CLI plumbing: console, --quiet, progress bars, the error-to-exit-code mapping and the
PROTOCOL argument the commands share."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from securefed.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, ConfigError, SecurefedError

__all__ = [
    "INTERRUPTED",
    "ProtocolArg",
    "ProtocolFileArg",
    "ProtocolOption",
    "console",
    "err_console",
    "handle_errors",
    "info",
    "interrupted",
    "plain_text",
    "progress",
    "resolve_protocol",
    "state",
    "subgroup",
    "track",
]

console = Console(emoji=False)  # ":AB:" in a fingerprint is not an emoji
err_console = Console(stderr=True, emoji=False)


class _State:
    quiet: bool = False
    debug: bool = False


state = _State()

F = TypeVar("F", bound=Callable[..., Any])


def info(message: str) -> None:
    """Print a progress/info line unless --quiet."""
    if not state.quiet:
        console.print(message)


def handle_errors(func: F) -> F:
    """Map securefed errors to clear messages and stable exit codes (securefed.errors.EXIT_*).

    Exit codes: 0 ok; 2 user error (bad input, refused operation); 3 security refusal
    (tampered, replayed or unauthenticated input); 4 audit finding; 1 internal failure (a bug:
    please report); 130 interrupted (Ctrl-C), with "interrupted; rerun to resume" on stderr.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SecurefedError as exc:
            err_console.print(
                f"[bold red]error[/] {escape(_printable(f'[{exc.code}] {exc}'))}", highlight=False
            )
            if state.debug:
                traceback.print_exc()
            raise typer.Exit(exc.exit_code) from exc
        except KeyboardInterrupt as exc:
            interrupted()
            raise typer.Exit(EXIT_INTERRUPTED) from exc
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - top-level boundary
            what = escape(_printable(f"{type(exc).__name__}: {exc}"))
            err_console.print(
                f"[bold red]internal error[/] {what}\n"
                "This is a bug in securefed; rerun with --debug and report the traceback.",
                highlight=False,
            )
            if state.debug:
                traceback.print_exc(file=sys.stderr)
            raise typer.Exit(EXIT_INTERNAL) from exc

    return wrapper  # type: ignore[return-value]


INTERRUPTED = "interrupted; rerun to resume"


def interrupted() -> None:
    """Say on stderr that the user interrupted the command (Ctrl-C): exit code 130 follows."""
    err_console.print(f"[bold yellow]{INTERRUPTED}[/]", highlight=False)
    if state.debug:
        traceback.print_exc(file=sys.stderr)


@contextmanager
def progress(transient: bool = False) -> Iterator[Progress]:
    """A rich progress bar that stays silent under --quiet."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=state.quiet,
    )
    with bar:
        yield bar


T = TypeVar("T")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (silent under --quiet)."""
    with progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def subgroup(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """The command group ``name`` of ``app``, created on first use, so that several areas can add
    commands to one group (e.g. `securefed features extract|bounds|release`)."""
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    group = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


# --- the study protocol, passed the same way everywhere -----------------------------------------
# Every command that reads a protocol takes it as its first positional argument PROTOCOL (as
# `securefed run PROTOCOL`). Commands that once took `--protocol FILE` keep that spelling as a
# hidden alias for existing scripts: they declare `protocol: ProtocolArg = None` and
# `protocol_option: ProtocolOption = None` and call `resolve_protocol`, which accepts exactly one
# of the two. Commands that always took it positionally use the required ProtocolFileArg.

ProtocolFileArg = Annotated[
    Path, typer.Argument(metavar="PROTOCOL", help="Study protocol TOML file.")
]

ProtocolArg = Annotated[
    Path | None,
    typer.Argument(metavar="PROTOCOL", help="Study protocol TOML.", show_default=False),
]
ProtocolOption = Annotated[
    Path | None,
    typer.Option(
        "--protocol",
        hidden=True,
        help="Old spelling of the PROTOCOL argument (kept for existing scripts).",
        show_default=False,
    ),
]


def resolve_protocol(positional: Path | None, option: Path | None) -> Path:
    """The protocol path given either as PROTOCOL or as the old `--protocol FILE`, never both.

    Raises ConfigError (exit 2) when neither or both are given."""
    if positional is not None:
        if option is not None:
            raise ConfigError(
                f"the protocol is given twice ({positional} and --protocol {option}); "
                "give it once, as the PROTOCOL argument"
            )
        return positional
    if option is None:
        raise ConfigError("missing the study protocol: give it as the PROTOCOL argument")
    return option


def plain_text(value: object) -> Any:
    """``value`` as rich Text that prints literally: no markup, and every control character
    (terminal escapes included) shown as its escape sequence. For names read from disk."""
    from rich.text import Text

    return Text(_printable(str(value)))


def _printable(text: str) -> str:
    """Every control character but newline as its escape sequence (no terminal escapes)."""
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)
