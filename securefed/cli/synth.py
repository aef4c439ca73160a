"""`securefed synth`: write a synthetic FeTS2022-layout federation (simulation only)."""

from __future__ import annotations

from pathlib import Path

import typer

from securefed.cli._common import console, handle_errors, info, progress

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)


@handle_errors
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (must be empty or absent)."),
    preset: str = typer.Option(
        "demo", "--preset", help="demo (45 cases), fets-like (267), fets-1251 (1251)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; same seed, same data."),
    spacing: float | None = typer.Option(
        None,
        "--spacing",
        help="Voxel size in mm (default: 3 for demo, 2 for fets-like, 4 for fets-1251).",
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
) -> None:
    """Write synthetic cases (FeTS2022 layout), partitioning_1.csv and truth.csv into OUT.

    truth.csv holds the simulated institution, scanner and tumour volumes: ground truth for
    evaluation and audits only; nothing in the pipeline reads it unless given --truth.
    """
    from securefed.data.synth import PRESETS, synthesize
    from securefed.errors import ConfigError

    if preset not in PRESETS:
        raise ConfigError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    total = PRESETS[preset].n_cases
    with progress() as bar:
        task = bar.add_task(f"synth {preset}", total=total)
        result = synthesize(
            out,
            preset=preset,
            seed=seed,
            spacing=spacing,
            workers=workers,
            force=force,
            on_case=lambda _sid: bar.advance(task),
        )
    shape = "x".join(str(n) for n in result.shape)
    spacing_txt = "x".join(f"{v:g}" for v in result.spacing)
    info(
        f"wrote {result.n_cases} cases from {result.n_institutions} institutions "
        f"({shape} voxels at {spacing_txt} mm) to {result.out}"
    )
    console.print(str(result.out), highlight=False)
