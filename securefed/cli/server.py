"""`securefed server collect`: the server opens, verifies and de-replays the sites' sealed feature
releases into one feature table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import (
    ProtocolArg,
    ProtocolOption,
    handle_errors,
    info,
    resolve_protocol,
    subgroup,
)
from securefed.cli.keys import _passphrase

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    server = subgroup(app, "server", "Server-side stages: collect sealed releases.")
    server.command("collect")(collect)


_PASS_HELP = "File holding the key passphrase."


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
