"""`securefed ledger show|verify`: the site's privacy ledger. Nothing here sends anything off the
site."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from securefed.cli._common import (
    console,
    err_console,
    handle_errors,
    plain_text,
    subgroup,
)
from securefed.errors import ConfigError

if TYPE_CHECKING:
    from securefed.privacy.ledger import LedgerState

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    ledger = subgroup(app, "ledger", "Inspect and verify a site's privacy ledger.")
    ledger.command("show")(show)
    ledger.command("verify")(verify)


_LedgerArg = Annotated[Path, typer.Argument(help="Ledger folder (or ledger.jsonl).")]


def _ledger_path(folder: Path) -> Path:
    from securefed.errors import LedgerError
    from securefed.privacy.ledger import LEDGER_FILE

    path = folder / LEDGER_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise LedgerError(f"{path}: no ledger here (a site's ledger is DIR/{LEDGER_FILE})")
    return path


def _ledger_path_or_none(folder: Path) -> Path | None:
    from securefed.privacy.ledger import LEDGER_FILE

    path = folder / LEDGER_FILE if folder.is_dir() else folder
    return path if path.is_file() else None


NO_DP_CHARGE = "no DP charge (plain release)"


def _no_charge(folder: Path) -> bool:
    """``folder`` exists and holds no ledger: a site's state folder after a plain release (which
    charges nothing, so writes no ledger), or one before any release. A missing folder, or a
    file that is not a ledger, is still "no ledger here" (exit 2)."""
    from securefed.privacy.ledger import LEDGER_FILE

    return folder.is_dir() and not (folder / LEDGER_FILE).exists()


def _say_no_charge(folder: Path) -> None:
    console.print(
        f"{NO_DP_CHARGE}: {plain_text(folder)} holds no privacy ledger; nothing was charged "
        "(a plain release is not differentially private: epsilon = inf)",
        highlight=False,
        markup=False,
    )


def _fmt_eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4g}"


@handle_errors
def show(folder: _LedgerArg) -> None:
    """Table of the ledger's entries and the site's spend against its budget; on a site's folder
    without a ledger (after a plain release) "no DP charge (plain release)", exit 0."""
    from rich.table import Table

    from securefed.privacy.ledger import read_ledger

    if _no_charge(folder):
        _say_no_charge(folder)
        return
    state = read_ledger(_ledger_path(folder))
    table = Table(title=f"privacy ledger of {state.site} ({state.protocol})")
    for col in ("seq", "time", "kind", "stage", "release id", "event", "epsilon"):
        table.add_column(col)
    for e in state.entries:
        event, eps = "", ""
        if e["kind"] == "intent":
            event = _describe(e["event"])
            eps = f"{e['claimed'][0]:g} (delta {e['claimed'][1]:g})" if e["claimed"] else "acct."
        table.add_row(
            str(e["seq"]),
            e["time"][:19],
            e["kind"],
            e.get("stage", ""),
            e.get("release_id", ""),
            event,
            eps,
        )
    console.print(table)
    _summary(state)


def _describe(event: dict[str, Any]) -> str:
    kind = event["type"].removesuffix("DpEvent")
    fields = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in event.items()
        if k != "type" and not isinstance(v, dict | list)
    ]
    inner = [_describe(v) for v in event.values() if isinstance(v, dict)]
    inner += [_describe(v) for lst in event.values() if isinstance(lst, list) for v in lst]
    return f"{kind}({', '.join(fields + inner)})"


def _summary(state: LedgerState) -> None:
    budget = state.budget
    if budget is None:
        console.print("empty ledger: nothing spent")
        return
    pending = len(state.charges) - len(state.committed)
    console.print(
        f"spent epsilon {_fmt_eps(state.spent())} of {_fmt_eps(budget.total_epsilon)} "
        f"at delta {budget.total_delta:g} ({budget.accountant} accountant); "
        f"{len(state.charges)} release(s), {pending} without commit (counted as spent)",
        highlight=False,
    )
    stages = state.spent_per_stage()
    if stages:
        from rich.table import Table

        table = Table(title=f"per stage, at delta {budget.total_delta:g}")
        for col in ("stage", "charges", "epsilon", "allocated"):
            table.add_column(col)
        counts: dict[str, int] = {}
        for charge in state.charges.values():
            counts[charge.stage] = counts.get(charge.stage, 0) + 1
        alloc = budget.stages
        for stage, eps in stages.items():
            allocated = _fmt_eps(alloc[stage][0]) if stage in alloc else "-"
            table.add_row(stage, str(counts[stage]), _fmt_eps(eps), allocated)
        table.add_row("total (composed)", str(len(state.charges)), _fmt_eps(state.spent()),
                      _fmt_eps(budget.total_epsilon))  # fmt: skip
        console.print(table)


@handle_errors
def verify(
    folder: _LedgerArg,
    server_head: Annotated[
        str | None,
        typer.Option(
            "--server-head",
            help="SEQ:HASH the server last saw of this site's ledger (its STATE/ledger-heads.json):"
            " exit 3 unless the file still extends it.",
        ),
    ] = None,
) -> None:
    """Check the hash chain and every entry; exit 3 naming the first bad line if tampered, or
    if the ledger no longer extends the head the server saw (rolled back). On a site's folder
    without a ledger (after a plain release) "no DP charge (plain release)", exit 0, unless the
    server saw a ledger there."""
    from securefed.errors import LedgerRollbackError
    from securefed.privacy.ledger import read_ledger

    if server_head is not None and not _ledger_path_or_none(folder):
        raise LedgerRollbackError(
            f"{folder}: no ledger, but the server saw {server_head} of it: it was deleted"
        )
    if _no_charge(folder):
        _say_no_charge(folder)
        return
    path = _ledger_path(folder)
    state = read_ledger(path)
    if server_head is not None:
        seq_text, _, head = server_head.partition(":")
        if not seq_text.isdigit() or not head:
            raise ConfigError(f"--server-head {server_head!r}: expected SEQ:sha256:<hex>")
        seq = int(seq_text)
        if len(state.entries) < seq or state.entries[seq - 1].get("hash") != head:
            raise LedgerRollbackError(
                f"{path}: does not extend the head the server saw ({server_head}): the ledger "
                "was truncated, deleted or replaced"
            )
    if state.torn_tail:
        err_console.print(
            f"warning: {path} ends with a torn line (a crash during a write, before any noise); "
            "it is not an entry and is cut off at the next write",
            highlight=False,
        )
    console.print(
        f"ok: {len(state.entries)} entries, chain intact, head {state.head}", highlight=False
    )
    _summary(state)
