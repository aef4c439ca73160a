"""`securefed protocol check|new|render|schema|app-hash|sign|verify`: check, start, render, export
the schema of, and sign and verify study protocols."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from securefed.cli._common import ProtocolFileArg, console, handle_errors, info, subgroup
from securefed.cli.keys import _passphrase, _PassphraseOption
from securefed.protocol import LoadedProtocol

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "protocol", "Check, render, sign and verify study protocols.")
    group.command("check")(check)
    group.command("new")(new)
    group.command("render")(render)
    group.command("schema")(schema)
    group.command("app-hash")(app_hash)
    group.command("sign")(sign)
    group.command("verify")(verify)


@handle_errors
def check(protocol: ProtocolFileArg) -> None:
    """Validate PROTOCOL; print its identity (sha256:<hex>) and a one-screen summary."""
    from securefed.protocol import load_protocol
    from securefed.protocol.pinned import check_pinned_files

    loaded = load_protocol(protocol)
    check_pinned_files(loaded)
    console.print(loaded.sha256, highlight=False)
    from securefed.protocol.render import supernode_readiness

    lines = _summary(loaded)[2:] + _privacy_lines(loaded) + _wire_lines(loaded)
    for line in lines + supernode_readiness(loaded.protocol):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _summary(loaded: LoadedProtocol) -> list[str]:
    """The protocol's one-screen summary; its last line is the verdict on what is and is not
    private (securefed.protocol.render.privacy_verdict)."""
    from securefed.protocol import summary_lines

    return summary_lines(loaded)


def _wire_lines(loaded: LoadedProtocol) -> list[str]:
    """The upload each site commits to per round (and, under bfv, its encryption time)."""
    from securefed.study.wire import estimate_upload

    est = estimate_upload(loaded.protocol)
    size = est["bytes_per_client_per_round"]
    line = (
        f"upload     {est['aggregation']}: {size / 1e6:.2f} MB per site and round "
        f"({size / est['fp32_bytes']:.2f}x the fp32 model of {est['values']:,} values)"
    )
    if est["sent_values"] != est["values"]:
        line += f"; only the {est['sent_values']:,} trained values are sent"
    lines = [line]
    if "encrypt_seconds_per_round" in est:
        two, one = est["bytes_two_per_slot"], est["bytes_one_per_slot"]
        lines += [
            f"           BFV: {two / 1e6:.2f} MB ({two / est['fp32_bytes']:.2f}x) when a phase's "
            f"FedAvg weights sum to <= {est['weight_sum_limit_two_per_slot']} (uniform weights), "
            f"else {one / 1e6:.2f} MB ({one / est['fp32_bytes']:.2f}x)",
            f"           encryption about {est['encrypt_seconds_per_round']:g} s per site and "
            "round on this machine",
        ]
    return lines


class BoardFormat(StrEnum):
    text = "text"
    md = "md"
    html = "html"


@handle_errors
def render(
    protocol: ProtocolFileArg,
    fmt: Annotated[
        BoardFormat, typer.Option("--format", help="text (default), md or html.")
    ] = BoardFormat.text,
    out: Annotated[Path | None, typer.Option("--out", help="Write to FILE instead.")] = None,
) -> None:
    """The board's document of PROTOCOL: per stage what leaves each site and how, epsilon and
    the derived noise, aggregation and minimum sizes, what the server learns, who can decrypt
    what, key fingerprints, what each party keeps; the protocol hash on every page."""
    from securefed.fileio import atomic_write_bytes
    from securefed.protocol import load_protocol
    from securefed.report.board import render_board

    loaded = load_protocol(protocol)
    body = render_board(loaded, fmt.value)
    if fmt is BoardFormat.text:
        body = "\n".join(_summary(loaded) + _privacy_lines(loaded)) + "\n\n" + body
    if out is not None:
        atomic_write_bytes(out, body.encode("utf-8"), mode=0o644)
        console.print(str(out), highlight=False, soft_wrap=True)
        return
    import sys

    sys.stdout.write(body)


def _privacy_lines(loaded: LoadedProtocol) -> list[str]:
    """Figures the protocol layer cannot compute itself (they need the DP accountant)."""
    from securefed.clustering.secure import collusion_lines

    if loaded.protocol.release.mode == "secure-aggregate":
        return collusion_lines(loaded.protocol)
    return []


@handle_errors
def schema() -> None:
    """Print the JSON Schema of a study protocol (also protocols/schema.json), generated from
    the schema's field descriptions."""
    import sys

    from securefed.protocol.reference import json_schema

    sys.stdout.write(json_schema())


@handle_errors
def app_hash() -> None:
    """Print the hash of this securefed's Flower app bundle (FAB), for the protocol's
    governance.approved_apps: sites run no other bundle."""
    from securefed.federation.site_executor import app_hash as compute

    console.print(compute(), highlight=False)


@handle_errors
def sign(
    protocol: ProtocolFileArg,
    key: Annotated[Path, typer.Option("--key", help="Governance private key (<id>.key).")],
    passphrase_file: _PassphraseOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Signature file (default PROTOCOL.sig).")
    ] = None,
) -> None:
    """Sign PROTOCOL's canonical hash with the governance key; add the signature to PROTOCOL.sig
    (other signers' signatures of the same protocol are kept)."""
    from securefed.crypto import (
        add_signature,
        load_private_keys,
        sign_protocol_hash,
        signature_path,
        verify_protocol_hash,
    )
    from securefed.protocol import load_protocol

    loaded = load_protocol(protocol)
    keys = load_private_keys(key, _passphrase(passphrase_file), role="governance")
    pinned = loaded.protocol.governance.signing_key
    if pinned is not None and pinned != keys.public.signing_fingerprint:
        info(
            f"note: key {keys.public.signing_fingerprint} is not the protocol's "
            f"governance.signing_key ({pinned}): signing as a co-signer; each site decides whom "
            "it trusts (`securefed site verify`)"
        )
    doc = sign_protocol_hash(loaded.sha256, keys)
    target = out if out is not None else signature_path(protocol)
    if pinned == keys.public.signing_fingerprint:
        verify_protocol_hash(doc, loaded.sha256, pinned, str(target))
    count = add_signature(doc, target)
    info(
        f"signed {loaded.sha256} with {keys.public.signing_fingerprint} "
        f"({count} signature(s) in {target.name})"
    )
    if pinned is None:
        info(
            "warning: this protocol has no governance.signing_key, so sites cannot verify the "
            "signature; add the fingerprint above and sign again"
        )
    console.print(str(target), highlight=False, soft_wrap=True)


@handle_errors
def verify(
    protocol: ProtocolFileArg,
    sig: Annotated[
        Path | None, typer.Option("--sig", help="Signature file (default PROTOCOL.sig).")
    ] = None,
) -> None:
    """Check PROTOCOL.sig against the protocol's own governance.signing_key: a consistency check
    for the board, NOT a trust decision (a key written in the protocol proves nothing about who
    approved it); sites decide with `securefed site verify PROTOCOL --site-config SITE.toml`."""
    from securefed.crypto import read_signature, signature_path, verify_protocol_hash
    from securefed.protocol import load_protocol

    loaded = load_protocol(protocol)
    sig_path = sig if sig is not None else signature_path(protocol)
    signer = verify_protocol_hash(
        read_signature(sig_path),
        loaded.sha256,
        loaded.protocol.governance.signing_key,
        str(sig_path),
    )
    console.print(f"OK {loaded.sha256} signed by {signer}", highlight=False, soft_wrap=True)


@handle_errors
def new(
    out: Annotated[Path, typer.Option("--out", help="The protocol file to write.")],
    sites: Annotated[
        str, typer.Option("--sites", help="The sites' ids, comma-separated (partitions 1..N).")
    ],
    deployment: Annotated[
        bool,
        typer.Option("--deployment", help="A deployment protocol (the only kind written here)."),
    ] = False,
    base: Annotated[
        str,
        typer.Option(
            "--from",
            help="A shipped protocol (demo, demo-secure-aggregate, ...) or a "
            "file: the study settings to start from.",
        ),
    ] = "demo",
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help="A folder of public keys to fill in: <id>.pub.json bundles "
            "(sites, server, governance) and <site-id>.node.pub or <site-id>/node.pub.",
        ),
    ] = None,
    server_id: Annotated[str, typer.Option("--server-id", help="The server's party id.")] = (
        "server"
    ),
    reply_slot_s: Annotated[
        float,
        typer.Option("--reply-slot-s", min=0.0, help="training.reply_slot_s (reply pacing)."),
    ] = 600.0,
) -> None:
    """Write a deployment protocol skeleton: every field a deployment needs, filled from --keys
    where given and left as TODO lines otherwise (`protocol check` then names what is missing)."""
    import tomllib

    from securefed import __version__
    from securefed.errors import ConfigError
    from securefed.federation.site_executor import app_hash as compute
    from securefed.fileio import write_exclusive
    from securefed.protocol.shipped import shipped_protocol
    from securefed.protocol.skeleton import deployment_skeleton

    if not deployment:
        raise ConfigError("protocol new: pass --deployment (simulation protocols: copy a shipped "
                          "one from protocols/)")  # fmt: skip
    ids = [s.strip() for s in sites.split(",") if s.strip()]
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise ConfigError(f"--sites {sites!r}: at least two distinct site ids, comma-separated")
    path = Path(base) if Path(base).is_file() else shipped_protocol(base)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    known, governance = _known_keys(keys, [*ids, server_id]) if keys else ({}, None)
    text = deployment_skeleton(data, ids, known, server_id=server_id, governance=governance,
                               app_hash=compute(), version=__version__,
                               reply_slot_s=reply_slot_s)  # fmt: skip
    pinned = _pinned_sources(path)  # before anything is written: a base that does not load
    write_exclusive(out, text.encode("utf-8"), mode=0o644)
    for copied in _copy_pinned_files(pinned, out.parent):
        info(f"{copied}: a file the protocol pins, copied next to it (ship it with the protocol)")
    todo = text.count("# TODO ")
    info(f"{out}: deployment protocol from {path.name} for {len(ids)} sites; {todo} key(s) "
         f"still to fill (TODO lines); then `securefed protocol check {out}`")  # fmt: skip


def _pinned_sources(base: Path) -> list[tuple[Path, str]]:
    """The files ``base`` pins (bounds, projection, public start): (where they are, the name the
    protocol gives them)."""
    from securefed.protocol import load_protocol
    from securefed.protocol.pinned import pinned_files

    loaded = load_protocol(base)
    return [(loaded.resolve(p.file), p.file) for _field, p in pinned_files(loaded.protocol)]


def _copy_pinned_files(pinned: list[tuple[Path, str]], folder: Path) -> list[Path]:
    """Copy ``pinned`` into ``folder`` where they are not there yet (a file already there is
    kept: `protocol check` compares it with the pin)."""
    import shutil

    copied = []
    for src, name in pinned:
        dst = folder / name
        if src.resolve() != dst.resolve() and src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied.append(dst)
    return copied


def _known_keys(folder: Path, parties: list[str]) -> tuple[dict[str, Any], str | None]:
    """Fingerprints found in ``folder`` by party id, and the governance key's (if one)."""
    from securefed.crypto import load_public_keys
    from securefed.crypto.node_key import node_key_fingerprint
    from securefed.protocol.skeleton import PartyKeys

    found: dict[str, PartyKeys] = {}
    governance = None
    for bundle in sorted(folder.glob("*.pub.json")):
        pub = load_public_keys(bundle)
        if pub.role == "governance":
            governance = pub.signing_fingerprint
        elif pub.party_id in parties:
            found[pub.party_id] = PartyKeys(pub.signing_fingerprint, pub.encryption_fingerprint)
    for party in parties:
        for node in (folder / f"{party}.node.pub", folder / party / "node.pub"):
            if node.is_file():
                prev = found.get(party, PartyKeys())
                found[party] = PartyKeys(prev.signing_key, prev.encryption_key,
                                         node_key_fingerprint(node))  # fmt: skip
    return found, governance
