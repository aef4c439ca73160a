"""The site's own signing key, as its SITE.toml names it (``site.key``), checked against the key
the accepted protocol pins for the site before it is used.

Nothing here leaves the site. Tests: ``tests/trust/test_site_key.py``.
"""

from __future__ import annotations

from pathlib import Path

from securefed.crypto import PrivateKeys, load_private_keys
from securefed.crypto.keys import read_passphrase
from securefed.errors import SiteTrustError
from securefed.protocol.schema import Protocol
from securefed.trust.policy import SiteConfig

__all__ = ["pinned_site_keys", "site_signing_key"]


def pinned_site_keys(protocol: Protocol) -> dict[str, str]:
    """Site id -> the signing-key fingerprint the protocol pins for it (sites without one are
    left out)."""
    return {s.id: s.signing_key for s in protocol.sites if s.signing_key is not None}


def site_signing_key(
    config: SiteConfig,
    config_path: str | Path,
    protocol: Protocol,
    key: Path | None = None,
    *,
    required: bool = True,
) -> PrivateKeys | None:
    """The site's private signing key: ``key`` or SITE.toml's ``site.key`` (a relative path is
    read from SITE.toml's folder), with ``site.key_passphrase_file``. None when the protocol pins
    no signing key for this site, or (``required`` off) when the site names none. SiteTrustError
    when the protocol pins one and the site names another, or none while ``required``; KeyError_
    for an unreadable key."""
    pinned = pinned_site_keys(protocol).get(config.site.id)
    if pinned is None:
        return None
    base = Path(config_path).parent
    path = key if key is not None else (base / config.site.key if config.site.key else None)
    if path is None and not required:
        return None
    if path is None:
        raise SiteTrustError(
            f"{config_path}: the protocol pins a signing key for {config.site.id} (it signs the "
            "site's SecAgg+ keys), but site.key names no private key file; add "
            '`key = "PATH"` under [site] (`securefed keys new site ID`)'
        )
    passphrase = None
    if config.site.key_passphrase_file:
        passphrase = read_passphrase(base / config.site.key_passphrase_file)
    private = load_private_keys(path, passphrase, role="site")
    got = private.public.signing_fingerprint
    if private.party_id != config.site.id or got != pinned:
        raise SiteTrustError(
            f"{path}: the key of {private.party_id} ({got}) is not the signing key the protocol "
            f"pins for {config.site.id} ({pinned}); refusing"
        )
    return private
