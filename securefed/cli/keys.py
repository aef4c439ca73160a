"""`securefed keys new|show|tls`: a party's signing and encryption keys, the passphrase file that
encrypts a private key (shared with the commands that load one), and the study's TLS files."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, info, subgroup

__all__ = ["Kem", "KeyRole", "register"]


class KeyRole(StrEnum):
    """`keys new --role`: the parties of a study (securefed.crypto.ROLES)."""

    site = "site"
    server = "server"
    governance = "governance"


class Kem(StrEnum):
    """`keys new --kem`: the encryption key types (securefed.crypto.KEMS)."""

    x25519 = "x25519"
    mlkem768_x25519 = "mlkem768-x25519"


def register(app: typer.Typer) -> None:
    keys = subgroup(app, "keys", "Create and inspect party keys (signing + encryption).")
    keys.command("new")(new)
    keys.command("show")(show)
    keys.command("tls")(tls)


def _passphrase(path: Path | None) -> bytes | None:
    """The passphrase from a file (securefed.crypto.keys.read_passphrase)."""
    from securefed.crypto.keys import read_passphrase

    return None if path is None else read_passphrase(path)


_PASS_HELP = "File holding the passphrase (first line) that encrypts the private key."


_PassphraseOption = Annotated[Path | None, typer.Option("--passphrase-file", help=_PASS_HELP)]


@handle_errors
def new(
    role: Annotated[KeyRole, typer.Option("--role", help="The party's role in the study.")],
    party_id: Annotated[str, typer.Option("--id", help="Party id (as in the protocol).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for <id>.key and <id>.pub.json.")],
    kem: Annotated[
        Kem, typer.Option("--kem", help="Encryption: x25519, or mlkem768-x25519 (hybrid PQ).")
    ] = Kem.x25519,
    passphrase_file: _PassphraseOption = None,
) -> None:
    """Create signing (Ed25519) and encryption (HPKE) keys; print the fingerprints to paste into
    the protocol. Only <id>.pub.json leaves the party; <id>.key is written 0600."""
    from securefed.crypto import generate_keys, write_keys

    keys = generate_keys(role.value, party_id, kem.value)
    paths = write_keys(keys, out, _passphrase(passphrase_file))
    info(f"private keys: {paths.private} (mode 0600; keep it at this party)")
    info(f"public keys:  {paths.public} (share this one)")
    _print_public(keys.public)


def _print_public(public: object) -> None:
    from securefed.crypto import PublicKeys

    assert isinstance(public, PublicKeys)
    console.print(f"role = {public.role}", highlight=False, soft_wrap=True)
    console.print(f"id = {public.party_id}", highlight=False, soft_wrap=True)
    console.print(f"kem = {public.kem}", highlight=False, soft_wrap=True)
    console.print(f'signing_key = "{public.signing_fingerprint}"', highlight=False, soft_wrap=True)
    if public.role != "governance":
        console.print(
            f'encryption_key = "{public.encryption_fingerprint}"', highlight=False, soft_wrap=True
        )


@handle_errors
def show(
    path: Annotated[
        Path,
        typer.Argument(
            help="Any key file securefed writes: a .pub.json bundle or a party .key, a SuperNode "
            "node.pub or node.key, a BFV key (he/bfv.key) or aggregator context "
            "(aggregator.ctx)."
        ),
    ],
) -> None:
    """Print what a key file is and its public fingerprints (no passphrase needed; nothing
    secret is printed)."""
    from securefed.crypto import load_public_keys

    kind = _other_kind(path)
    if kind is None:
        _print_public(load_public_keys(path))
        return
    for line in kind:
        console.print(line, highlight=False, soft_wrap=True)


def _other_kind(path: Path) -> list[str] | None:
    """The description of a node key or BFV file (None: a party key bundle or .key)."""
    from securefed.errors import CryptoError

    if not path.is_file():
        return None
    with path.open("rb") as fh:
        head = fh.read(64)
    if head.startswith(b"ecdsa-sha2-nistp384 "):
        from securefed.crypto.node_key import node_key_fingerprint

        return ["kind = SuperNode node key, public (ECDSA P-384, OpenSSH)",
                f'node_key = "{node_key_fingerprint(path)}"']  # fmt: skip
    if head.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        from securefed.crypto.node_key import check_node_private_key

        return ["kind = SuperNode node key, private (ECDSA P-384, OpenSSH; keep it at the site)",
                f'node_key = "{check_node_private_key(path)}"']  # fmt: skip
    if path.suffix in (".ctx",) or path.name.endswith("bfv.key"):
        from securefed.crypto.bfv import load_aggregator_context, load_key

        data = path.read_bytes()
        try:
            key_id = load_key(data, str(path)).key_id
            return ["kind = BFV secret key (the sites' shared key; never leaves a site)",
                    f"key_id = {key_id.hex()}"]  # fmt: skip
        except CryptoError:
            pass
        key_id = load_aggregator_context(data, str(path)).key_id
        return ["kind = BFV aggregator context (public: adds ciphertexts, holds no key)",
                f"key_id = {key_id.hex()}"]  # fmt: skip
    return None


@handle_errors
def tls(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for ca.pem, ca.key, server.pem, server.key.")
    ],
    host: Annotated[
        list[str],
        typer.Option(
            "--host",
            help="A name or IP address sites dial to reach the SuperLink (repeat for several; "
            "the first is the certificate's CN).",
        ),
    ],
    days: Annotated[
        int, typer.Option("--days", min=1, help="Days the certificates are valid.")
    ] = 730,
) -> None:
    """Create a study CA and the SuperLink's TLS certificate signed by it (RSA 2048, no openssl
    needed; files are never overwritten). Send ca.pem to every site; keep ca.key offline."""
    from securefed.crypto.study_ca import certificate_sha256, make_study_tls

    files = make_study_tls(out, host, days=days)
    info(f"CA certificate:     {files.ca_cert} (send it to every site)")
    info(f"CA private key:     {files.ca_key} (mode 0600; keep it offline)")
    info(f"server certificate: {files.server_cert} (flower-superlink --ssl-certfile)")
    info(f"server private key: {files.server_key} (mode 0600; flower-superlink --ssl-keyfile)")
    console.print(
        f"ca_sha256 = {certificate_sha256(files.ca_cert)}", highlight=False, soft_wrap=True
    )
