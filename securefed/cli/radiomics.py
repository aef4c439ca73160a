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
    from securefed import __version__
    from securefed.data import load_federation
    from securefed.errors import NoCasesError, PartitionError
    from securefed.protocol import load_protocol
    from securefed.radiomics import extract_features, save_table
    from securefed.radiomics.cache import CACHE_DIR, pyradiomics_version

    loaded = load_protocol(resolve_protocol(protocol, protocol_option))
    proto = loaded.protocol
    spec = proto.radiomics
    fed = load_federation(data, partitioning=proto.data.partitioning)
    splits = fed.splits(
        seed=proto.data.split_seed,
        test_fraction=proto.data.test_fraction,
        val_fraction=proto.data.val_fraction,
    )
    known = set(fed.listed.values()) | set(fed.partition_of.values())
    wanted = set(partition) if partition else known
    unknown = sorted(wanted - known)
    if unknown:
        raise PartitionError(
            f"--partition {unknown[0]}: not a partition id of {proto.data.partitioning} in {data} "
            f"(known: {', '.join(str(p) for p in sorted(known))})"
        )
    cases = [c for s, c in sorted(fed.cases.items()) if fed.partition_of[s] in wanted]
    problems = [p for p in fed.problems if fed.listed.get(p.subject_id) in wanted or not fed.listed]
    excluded: dict[str, str] = {p.subject_id: str(p) for p in problems}
    info(
        f"protocol {loaded.sha256}; {len(cases)} case(s) in partition(s) "
        f"{', '.join(str(p) for p in sorted(wanted))}; binning {spec.binning}, mask {spec.mask}"
    )
    with progress() as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int, subject_id: str) -> None:
            if stage not in tasks:
                label = "intensity ranges" if stage == "scan" else "radiomics"
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done)

        result = extract_features(
            cases,
            spec,
            cache_dir=out / CACHE_DIR,
            partition_of=fed.partition_of,
            split_of=splits,
            workers=workers,
            progress=report,
            on_error="raise" if strict else "exclude",
        )
    excluded.update(result.excluded)
    if len(result.table) == 0:
        raise NoCasesError(
            f"no case of partition(s) {sorted(wanted)} in {data} could be extracted; "
            f"excluded: {', '.join(sorted(excluded)) or 'none'}"
        )
    manifest = {
        "protocol_sha256": loaded.sha256,
        "settings": spec.model_dump(mode="json"),
        "pyradiomics_version": pyradiomics_version(),
        "securefed_version": __version__,
        "partitions": sorted(wanted),
        "content_keys": result.content_keys,
        "excluded": dict(sorted(excluded.items())),
        "bin_edges": None
        if result.edges is None
        else {m: list(e) for m, e in result.edges.items()},
        "site_local": "raw features: never send this folder; release through the protocol",
    }
    save_table(result.table, out, manifest)
    n, m = result.table.shape
    info(
        f"wrote {n} case(s) x {m} features to {out / 'features.csv'} "
        f"(computed {result.computed}, from cache {result.cached})"
    )
    if excluded:
        err_console.print(f"[yellow]excluded {len(excluded)} case(s):[/]", highlight=False)
        for sid, reason in sorted(excluded.items()):
            err_console.print(f"  {sid}: {reason}", highlight=False, markup=False)
