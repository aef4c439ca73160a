"""`securefed data ...`: check a FeTS2022 / BraTS data root before a study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, plain_text, progress, subgroup
from securefed.errors import DataError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "data", "Check FeTS2022 / BraTS data roots (nothing leaves the site).")
    group.command("check")(check)


@handle_errors
def check(
    root: Annotated[Path, typer.Argument(help="Data root holding one folder per case.")],
    partitioning: Annotated[
        str,
        typer.Option(
            "--partitioning",
            "-p",
            help="Partition file: a name in ROOT (partitioning_1, partitioning_2), a CSV path, "
            "or 'none' (no partition file).",
        ),
    ] = "partitioning_1",
    full: Annotated[
        bool,
        typer.Option(
            "--full/--header-only",
            help="Read every voxel (default: NaN/inf, label values, corrupt data; about 0.4 s "
            "per FeTS-sized case per worker) or only the headers (instant, misses bad values).",
        ),
    ] = True,
    workers: Annotated[
        int, typer.Option("--workers", "-j", min=1, help="Processes for --full.")
    ] = 1,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 2 when any case is excluded (default: only when no case loads).",
        ),
    ] = False,
) -> None:
    """Validate ROOT: list every excluded case (case, file, problem) and a summary line.

    Exit 0 when at least one case loads, 2 when none does; with --strict, 2 when any case is
    excluded."""
    from rich.table import Table

    from securefed.data import load_federation

    part = None if partitioning.lower() == "none" else partitioning
    with progress(transient=True) as bar:
        task = bar.add_task("checking cases (full)" if full else "checking headers", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        fed = load_federation(
            root,
            part,
            check="full" if full else "header",
            workers=workers,
            progress=on_progress,
        )
    if fed.problems:
        table = Table(title="Excluded cases", show_lines=False)
        table.add_column("case")
        table.add_column("file")
        table.add_column("problem", overflow="fold")
        for p in fed.problems:  # names come from the disk: no markup, no terminal escapes
            table.add_row(plain_text(p.subject_id), plain_text(p.file or "-"),
                          plain_text(p.problem))  # fmt: skip
        console.print(table)
    parts = fed.partitions
    console.print(
        plain_text(f"{len(parts)} partition{'s' if len(parts) != 1 else ''}; {fed.summary()}"),
        highlight=False,
    )
    if strict and fed.problems:
        excluded = sorted({p.subject_id for p in fed.problems})
        raise DataError(
            f"--strict: {len(excluded)} case(s) excluded: {', '.join(excluded)} (the table above "
            "gives each file and problem)"
        )
