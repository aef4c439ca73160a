"""`securefed synth`: write a synthetic FeTS2022-layout federation (simulation only)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, info, progress

__all__ = ["SynthPreset", "register"]


class SynthPreset(StrEnum):
    """`synth --preset`: the names of securefed.data.synth.PRESETS."""

    demo = "demo"
    shifted = "shifted"
    fets_like = "fets-like"
    fets_1251 = "fets-1251"
    fets_1251_shifted = "fets-1251-shifted"
    public = "public"


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)


@handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (must be empty or absent).")],
    preset: Annotated[
        SynthPreset,
        typer.Option(
            "--preset",
            help="demo (45 cases), shifted (48), fets-like (267), fets-1251 (1251), "
            "fets-1251-shifted (1251, contrast-shifted groups), public (32, for `securefed "
            "pretrain`).",
        ),
    ] = SynthPreset.demo,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same data.")] = 0,
    spacing: Annotated[
        float | None,
        typer.Option(
            "--spacing",
            help="Voxel size in mm (default: 3 for demo and shifted, 2 for fets-like, 4 for "
            "fets-1251 and fets-1251-shifted).",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-j", min=1, help="Parallel worker processes.")
    ] = 1,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
) -> None:
    """Write synthetic cases (FeTS2022 layout), partitioning_1.csv and truth.csv into OUT.

    truth.csv holds the simulated institution, scanner and tumour volumes: ground truth for
    evaluation and audits only; nothing in the pipeline reads it unless given --truth.
    """
    from securefed.data.synth import PRESETS, synthesize

    total = PRESETS[preset.value].n_cases
    with progress() as bar:
        task = bar.add_task(f"synth {preset.value}", total=total)
        result = synthesize(
            out,
            preset=preset.value,
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
