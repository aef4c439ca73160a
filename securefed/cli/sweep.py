"""`securefed sweep`: privacy-accuracy trade-offs over a grid of protocols.

Contract: ``securefed sweep PROTOCOL --data DIR [--truth TRUTH.csv] --out DIR [--grid
GRID.toml]`` runs every grid point (docs/sweep.md has the grid format and the columns) as a whole
study and writes ``DIR/sweep.csv``, ``DIR/sweep.json`` and ``DIR/report.html``; rerun with the
same ``--out`` to resume point by point. ``--truth``: a synthetic federation's ground truth
(ARI against the scanners, Dice per scanner); without it, on real data, ARI against the partition
file's institutions and Dice per site and per cluster. Exit 0 when every point ran or was
skipped by the schema, 2 on bad input, 5 (securefed.errors.EXIT_SWEEP_POINT_FAILED) when a point
failed (its row says why; the others are written).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, info, progress
from securefed.errors import EXIT_SWEEP_POINT_FAILED

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)


@handle_errors
def sweep(
    protocol: Annotated[Path, typer.Argument(help="Base study protocol (simulation).")],
    data: Annotated[Path, typer.Option("--data", help="FeTS2022-layout root of the federation.")],
    out: Annotated[Path, typer.Option("--out", help="Sweep folder; rerun to resume.")],
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="truth.csv of a synthetic federation (ARI vs scanner, "
            "per-scanner Dice); without it (real data): ARI vs institution, Dice per "
            "site and cluster.",
        ),
    ] = None,
    grid: Annotated[
        Path | None,
        typer.Option("--grid", help="Grid TOML ([grid] table, docs/sweep.md); default grid."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-j", min=1, help="Processes for feature extraction.")
    ] = 2,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="Torch device of the simulated sites: cpu, cuda (each "
            "site an equal share of the GPU), cuda:N or auto.",
        ),
    ] = "auto",
) -> None:
    """Run every grid point as a whole study; write sweep.csv, sweep.json and report.html."""
    from securefed.cli.study import _Bars, _quiet_flower
    from securefed.sweep import load_grid, run_sweep

    spec = load_grid(grid)
    start = time.perf_counter()
    _quiet_flower()
    with progress(transient=True) as bar:
        rows = run_sweep(protocol, data, truth, out, spec, log=info, progress=_Bars(bar),
                         workers=workers, device=device)  # fmt: skip
    done = sum(r.get("status") == "done" for r in rows)
    failed = [r for r in rows if r.get("status") == "failed"]
    info(f"{done} of {len(rows)} point(s) done in {time.perf_counter() - start:.0f} s; "
         f"report: {out / 'report.html'}")  # fmt: skip
    for row in failed:
        console.print(f"[red]failed[/red] {row['point']}: {row.get('reason', '')}", markup=True)
    if failed:
        raise typer.Exit(EXIT_SWEEP_POINT_FAILED)
