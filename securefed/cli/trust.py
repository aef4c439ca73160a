"""The site's acceptance of a protocol before it touches a key or a case, shared by the site-side
commands that use the site's private keys (`features release`, `site he-key deal|open`). Not a
command group: the `site` commands live in securefed/cli/site.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from securefed.crypto import PrivateKeys
    from securefed.trust import AcceptedProtocol, SiteConfig

__all__ = ["accepted_site_keys"]


def accepted_site_keys(
    protocol: Path, site_config: Path, key: Path, passphrase_file: Path | None
) -> tuple[SiteConfig, AcceptedProtocol, PrivateKeys]:
    """The protocol accepted by this site's trust and policy (before any key or data is
    touched), then the site's private keys, which must be the configured site's."""
    from securefed.cli.keys import _passphrase
    from securefed.crypto import load_private_keys
    from securefed.errors import SiteTrustError
    from securefed.trust import load_site_config, verify_for_site

    config = load_site_config(site_config)
    accepted = verify_for_site(protocol, config)
    keys = load_private_keys(key, _passphrase(passphrase_file), role="site")
    if keys.party_id != config.site.id:
        raise SiteTrustError(
            f"--key {key} is {keys.party_id}'s key but --site-config is for {config.site.id}; "
            "refusing"
        )
    return config, accepted, keys
