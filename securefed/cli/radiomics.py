"""`securefed features extract|bounds|release`: a site's radiomic features. ``extract`` computes
them into FEATDIR (stays at the site), ``bounds`` derives clipping bounds from a REFERENCE folder,
``release`` protects them as the protocol says and seals them to the server (the only command of
the group that sends anything off the site)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from securefed.cli._common import (
    ProtocolArg,
    ProtocolOption,
    console,
    err_console,
    handle_errors,
    info,
    progress,
    resolve_protocol,
    subgroup,
)
from securefed.errors import CaseError

if TYPE_CHECKING:
    from securefed.data import CaseProblem
    from securefed.protocol import LoadedProtocol

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "features", "Extract, bound and release radiomic features.")
    group.command("extract")(extract)
    group.command("release")(release)
    group.command("bounds")(bounds)


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
        bool,
        typer.Option(
            "--strict",
            help="Exit 2, naming the case and file, when any case is excluded or unreadable "
            "(checked before anything is extracted) or fails during extraction; default: "
            "exclude such cases and list them.",
        ),
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
    if strict and (problems := _excluded_cases(loaded, data, partition or ())):
        raise _strict_error([str(p) for p in problems], extracted=False, first=problems[0])
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
        if strict:  # the data changed between the check above and the extraction
            raise _strict_error(list(result.excluded.values()), extracted=True)
        err_console.print(f"[yellow]excluded {len(result.excluded)} case(s):[/]", highlight=False)
        for sid, reason in result.excluded.items():
            err_console.print(f"  {sid}: {reason}", highlight=False, markup=False)


def _excluded_cases(
    loaded: LoadedProtocol, data: Path, partitions: Sequence[int]
) -> list[CaseProblem]:
    """The cases of ``partitions`` (default: all) that extraction would exclude: missing,
    unlisted, or failing the header check (as `securefed data check --header-only`)."""
    from securefed.data import load_federation

    fed = load_federation(data, partitioning=loaded.protocol.data.partitioning)
    wanted = set(partitions)
    return [
        p
        for p in fed.problems
        if not wanted or not fed.listed or fed.listed.get(p.subject_id) in wanted
    ]


def _strict_error(
    reasons: list[str], *, extracted: bool, first: CaseProblem | None = None
) -> CaseError:
    """--strict: the error (exit 2) naming every excluded case and its file."""
    what = "OUT was written without them: do not use it" if extracted else "nothing was extracted"
    return CaseError(
        f"--strict: {len(reasons)} case(s) excluded or unreadable: {'; '.join(reasons)}; {what} "
        "(fix or remove them, or drop --strict to exclude them)",
        case=first.subject_id if first is not None else None,
        path=first.file if first is not None else None,
    )


@handle_errors
def bounds(
    features: Annotated[
        Path, typer.Option("--features", help="Reference feature folder (FEATDIR).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Bounds JSON file to write.")],
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help='What the reference data is, e.g. "synthetic federation seed 0, NOT study data".',
        ),
    ],
    low_pct: Annotated[
        float, typer.Option("--low-pct", help="Lower percentile per feature.")
    ] = 0.0,
    high_pct: Annotated[
        float, typer.Option("--high-pct", help="Upper percentile per feature.")
    ] = 100.0,
    margin: Annotated[
        float, typer.Option("--margin", help="Widen each side by this x the width.")
    ] = 0.0,
) -> None:
    """Derive per-feature clipping bounds from a REFERENCE feature folder (never the study's own
    data) and print the sha256 to pin in the protocol's release.bounds."""
    from securefed.privacy.bounds import derive_bounds, write_bounds
    from securefed.radiomics.storage import load_table

    table, _ = load_table(features)
    derived = derive_bounds(
        table.values,
        table.columns,
        source=source,
        low_pct=low_pct,
        high_pct=high_pct,
        margin=margin,
    )
    digest = write_bounds(derived, out)
    info(f"{len(derived.columns)} columns from {len(table.subject_ids)} reference cases -> {out}")
    console.print(digest, highlight=False)


_PASS_HELP = "File holding the key passphrase."


@handle_errors
def release(
    features: Annotated[Path, typer.Option("--features", help="Site feature folder (FEATDIR).")],
    key: Annotated[
        Path, typer.Option("--key", help="This site's private key file (or its folder).")
    ],
    server_key: Annotated[
        Path,
        typer.Option("--server-key", help="The server's public key bundle (<id>.pub.json)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Outbox folder for the sealed envelope.")],
    site_config: Annotated[
        Path,
        typer.Option(
            "--site-config",
            help="This site's trust and policy (`securefed site init`); the protocol is "
            "verified against it before any data is read.",
        ),
    ],
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            help="This site's state folder (privacy ledger, message counters); default and "
            "only allowed value: SITE.toml's site.ledger_dir when it sets one.",
        ),
    ] = None,
    protocol: ProtocolArg = None,
    protocol_option: ProtocolOption = None,
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help=_PASS_HELP)
    ] = None,
    unsafe_seed: Annotated[
        int | None,
        typer.Option(
            "--unsafe-seed",
            help="Seeded noise (simulation protocols with unsafe_seeded_noise).",
        ),
    ] = None,
    partitions: Annotated[
        Path | None,
        typer.Option(
            "--partitions",
            help="The site's partition file; its Patient_ID column groups a patient's cases "
            "(local-dp sends one row per patient). Without it every case is its own patient.",
        ),
    ] = None,
) -> None:
    """Protect this site's features as PROTOCOL says (plain, local-dp or a lower-dimensional
    release), charge the ledger, seal to the server. Leaves the site: one envelope in OUT."""
    from securefed.cli.trust import accepted_site_keys
    from securefed.crypto import load_public_keys
    from securefed.data import read_patients
    from securefed.site.release import release_site_features
    from securefed.trust import check_recipient, site_state_folder

    protocol_path = resolve_protocol(protocol, protocol_option)
    # the protocol accepted before any data is read, then the site's own keys
    config, accepted, site_keys = accepted_site_keys(protocol_path, site_config, key,
                                                     passphrase_file)  # fmt: skip
    state = site_state_folder(config, state)
    server = load_public_keys(server_key, role="server")
    check_recipient(config, server.encryption_fingerprint)

    patients = read_patients(partitions) if partitions is not None else None
    result = release_site_features(
        features, accepted, site_keys, server, out, state, unsafe_seed=unsafe_seed,
        patients=patients,
    )  # fmt: skip
    eps = "inf (no DP: plain release)" if result.epsilon == float("inf") else f"{result.epsilon:g}"
    info(
        f"{result.site_id}: {result.cases} case(s) x {result.columns} values, epsilon {eps}, "
        f"delta {result.delta:g}"
    )
    console.print(str(result.envelope), highlight=False)
