"""`securefed site init` and `securefed site verify`: the site's own trust and policy.

Contract (scripts outside the repository call these): ``site verify`` exits 0 printing the accepted
``sha256:<hex>``, or 3 naming the failed check; a malformed site configuration exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import ProtocolFileArg, console, handle_errors, info, subgroup

__all__ = ["register"]

SiteConfigOption = Annotated[
    Path, typer.Option("--site-config", help="This site's configuration (SITE.toml).")
]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "site", "A site's own trust and policy: init, verify a protocol.")
    group.command("init")(init)
    group.command("verify")(verify)


@handle_errors
def init(
    site_id: Annotated[str, typer.Option("--site-id", help="This site's id in the protocol.")],
    trust: Annotated[
        list[Path],
        typer.Option("--trust", help="A governance public key the site trusts (repeatable)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="The site configuration to write.")],
    threshold: Annotated[
        int, typer.Option("--threshold", help="Trusted signatures a protocol needs.")
    ] = 1,
    ledger_dir: Annotated[
        Path | None,
        typer.Option(
            "--ledger-dir",
            help="The site's state folder of this study: verify then refuses a protocol that "
            "would start the site's budget afresh.",
        ),
    ] = None,
    allow_recipient: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-recipient",
            help="A server encryption-key fingerprint the site may seal to (repeatable).",
        ),
    ] = None,
) -> None:
    """Write a site configuration with the strictest policy (edit it to what your governance
    allows): trusted governance keys, signature threshold, policy."""
    from securefed.crypto import load_public_keys
    from securefed.errors import KeyError_
    from securefed.trust import SitePolicy, strictest_config, write_site_config

    keys = []
    for path in trust:
        public = load_public_keys(path)
        if public.role != "governance":
            raise KeyError_(f"{path}: a {public.role} key, not a governance key")
        keys.append(public.signing_fingerprint)
    config = strictest_config(
        site_id, tuple(keys), threshold, str(ledger_dir) if ledger_dir is not None else None
    )
    if allow_recipient:
        policy = SitePolicy.model_validate(
            {**config.policy.model_dump(), "allowed_recipient_keys": tuple(allow_recipient)},
            strict=False,
        )
        config = config.model_copy(update={"policy": policy})
    path = write_site_config(config, out)
    info(f"site {site_id}: trusts {len(set(keys))} governance key(s), threshold {threshold}")
    console.print(str(path), highlight=False, soft_wrap=True)


@handle_errors
def verify(protocol: ProtocolFileArg, site_config: SiteConfigOption) -> None:
    """Accept PROTOCOL for this site (signatures at PROTOCOL.sig by trusted keys, version, the
    site's policy): exit 0 printing its sha256, or 3 naming the failed check."""
    from securefed.trust import load_site_config, verify_for_site

    config = load_site_config(site_config)
    accepted = verify_for_site(protocol, config)
    how = (
        "unsigned simulation (allowed by policy)"
        if accepted.unsigned
        else (f"signed by {len(accepted.signers)} trusted key(s)")
    )
    info(f"{config.site.id}: accepted, {how}")
    console.print(accepted.sha256, highlight=False, soft_wrap=True)
