"""`securefed features release` (site) and `securefed server collect` (server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import (
    ProtocolArg,
    ProtocolOption,
    console,
    handle_errors,
    info,
    resolve_protocol,
    subgroup,
)
from securefed.cli.keys import _passphrase

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    features = subgroup(app, "features", "Extract, bound and release radiomic features.")
    features.command("release")(release)
    server = subgroup(app, "server", "Server-side stages: collect sealed releases.")
    server.command("collect")(collect)


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
    config, loaded, site_keys = accepted_site_keys(protocol_path, site_config, key,
                                                   passphrase_file)  # fmt: skip
    state = site_state_folder(config, state)
    server = load_public_keys(server_key, role="server")
    check_recipient(config, server.encryption_fingerprint)

    patients = read_patients(partitions) if partitions is not None else None
    result = release_site_features(
        features, loaded, site_keys, server, out, state, unsafe_seed=unsafe_seed,
        patients=patients,
    )  # fmt: skip
    eps = "inf (no DP: plain release)" if result.epsilon == float("inf") else f"{result.epsilon:g}"
    info(
        f"{result.site_id}: {result.cases} case(s) x {result.columns} values, epsilon {eps}, "
        f"delta {result.delta:g}"
    )
    console.print(str(result.envelope), highlight=False)


@handle_errors
def collect(
    inbox: Annotated[Path, typer.Option("--inbox", help="Folder with the sites' *.env envelopes.")],
    key: Annotated[
        Path, typer.Option("--key", help="The server's private key file (or its folder).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the collected feature table.")],
    state: Annotated[Path, typer.Option("--state", help="Server state folder (replay guard).")],
    protocol: ProtocolArg = None,
    protocol_option: ProtocolOption = None,
    site_keys: Annotated[
        list[Path] | None,
        typer.Option(
            "--site-key",
            help="Site public key bundles (simulation protocols without pinned site keys).",
        ),
    ] = None,
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help=_PASS_HELP)
    ] = None,
) -> None:
    """Verify (pinned sender, signature, protocol, stage, size, replay), decrypt and assemble
    every site's release into OUT/features.csv. All or nothing: one bad envelope, nothing
    collected."""
    from securefed.crypto import load_private_keys, load_public_keys
    from securefed.protocol import load_protocol
    from securefed.server.collect import collect_features

    loaded = load_protocol(resolve_protocol(protocol, protocol_option))
    keys = load_private_keys(key, _passphrase(passphrase_file), role="server")
    publics = tuple(load_public_keys(p, role="site") for p in site_keys or [])
    table = collect_features(inbox, loaded, keys, out, state, site_public_keys=publics)
    info(
        f"collected {len(table.subject_ids)} case(s) x {len(table.columns)} values from "
        f"{len(table.senders)} site(s) into {out / 'features.csv'}"
    )
