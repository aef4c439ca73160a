"""`securefed features extract`: whole-brain radiomics of a site's cases into FEATDIR."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from securefed.cli._common import (
    ProtocolArg,
    ProtocolOption,
    err_console,
    handle_errors,
    info,
    progress,
    resolve_protocol,
    subgroup,
)

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "features", "Extract, bound and release radiomic features.")
    group.command("extract")(extract)


@handle_errors
def extract(
    data: Annotated[
        Path, typer.Option("--data", help="FeTS2022-layout root with the partition file.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Site feature folder (FEATDIR) to write.")],
    protocol: ProtocolArg = None,
    protocol_option: ProtocolOption = None,
    workers: Annotated[
        int, typer.Option("--workers", "-j", min=1, help="Processes for extraction.")
    ] = 1,
    partition: Annotated[
        list[int] | None,
        typer.Option("--partition", help="Only these partition ids (repeatable); default: all."),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on the first bad case instead of excluding it.")
    ] = False,
) -> None:
    """Compute PROTOCOL's radiomic features for every case into OUT (features.csv +
    manifest.json + a per-case cache). Stays at the site: nothing is sent anywhere."""
    from securefed.protocol import load_protocol
    from securefed.site.extract import extract_site_features

    loaded = load_protocol(resolve_protocol(protocol, protocol_option))
    spec = loaded.protocol.radiomics
    info(
        f"protocol {loaded.sha256}; partition(s) "
        f"{', '.join(str(p) for p in sorted(partition)) if partition else 'all'}; "
        f"binning {spec.binning}, mask {spec.mask}"
    )
    with progress() as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int, subject_id: str) -> None:
            if stage not in tasks:
                label = "intensity ranges" if stage == "scan" else "radiomics"
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done)

        result = extract_site_features(
            loaded, data, out, partitions=partition or (), workers=workers, strict=strict,
            progress=report,
        )  # fmt: skip
    info(
        f"wrote {result.cases} case(s) x {result.columns} features to {out / 'features.csv'} "
        f"(computed {result.computed}, from cache {result.cached})"
    )
    if result.excluded:
        err_console.print(f"[yellow]excluded {len(result.excluded)} case(s):[/]", highlight=False)
        for sid, reason in result.excluded.items():
            err_console.print(f"  {sid}: {reason}", highlight=False, markup=False)
