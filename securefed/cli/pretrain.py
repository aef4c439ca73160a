"""`securefed pretrain`: a public starting model for a protocol's ``training.initial_weights``.

Runs on public data only (never a site's patients) and sends nothing anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, info, state
from securefed.errors import ConfigError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)


@handle_errors
def pretrain(
    protocol: Annotated[Path, typer.Argument(help="Protocol whose training.model to pretrain.")],
    data: Annotated[
        Path,
        typer.Option("--data", help="PUBLIC cases (FeTS2022 layout), e.g. synth --preset public."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Weights file to write (.npz).")],
    source: Annotated[
        str,
        typer.Option(
            "--source", help='What the public data is, e.g. "securefed synth --preset public".'
        ),
    ],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 400,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Learning rate (default: training.lr).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of batches and crops.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
) -> None:
    """Train the protocol's model on every labelled case under --data (public data only: the file
    is shipped with the protocol to every site) and print the sha256 to pin in
    training.initial_weights. Writes OUT (the weights, .npz) and their provenance next to it
    (weights.npz -> weights.json)."""
    from securefed import __version__
    from securefed.data import load_federation
    from securefed.fileio import write_json_atomic
    from securefed.protocol import file_sha256, load_protocol
    from securefed.training.checkpoints import save_weights
    from securefed.training.local import prepare_cases
    from securefed.training.pretrained import pretrain as run_pretrain

    if out.suffix != ".npz":
        raise ConfigError(f"--out {out}: must end in .npz")
    if out.exists() and not force:
        raise ConfigError(f"--out {out}: exists; pass --force to replace it")
    loaded = load_protocol(protocol)
    spec = loaded.protocol.training
    federation = load_federation(data, None)
    cases = [c for c in federation.cases.values() if c.seg is not None]
    if not cases:
        raise ConfigError(f"--data {data}: no case with a segmentation; pretraining needs labels")
    model = "dp-unet" if spec.dp_sgd.enabled else spec.model
    info(f"pretraining {model} on {len(cases)} public cases for {steps} steps ...")
    prepared = prepare_cases(cases, spec)
    rate = float(lr if lr is not None else spec.lr)
    weights, stats = run_pretrain(spec, prepared, steps=steps, lr=rate, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, weights)
    digest = file_sha256(out)
    write_json_atomic(
        out.with_suffix(".json"),
        {
            "weights": out.name,
            "sha256": digest,
            "source": source,
            "cases": len(cases),
            "model": model,
            "steps": int(stats["steps"]),
            "lr": rate,
            "seed": seed,
            "crop_size": list(spec.crop_size),
            "spacing_mm": spec.spacing_mm,
            "final_loss": stats["loss"],
            "securefed_version": __version__,
        },
    )
    info(f"wrote {out} (mean loss {stats['loss']:.3f}, {stats['seconds']:.0f} s); pin it with")
    if not state.quiet:
        snippet = f'[training.initial_weights]\nfile = "{out.name}"\nsha256 = "{digest}"'
        console.print(snippet, markup=False, highlight=False, soft_wrap=True)
    console.print(digest, highlight=False)
