"""Site configurations for tests: a governance key signs the protocol and each site trusts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from securefed.crypto import (
    PrivateKeys,
    add_signature,
    generate_keys,
    load_public_keys,
    private_key_path,
    sign_protocol_hash,
    signature_path,
)
from securefed.protocol import load_protocol
from securefed.trust import (
    SiteConfig,
    SiteIdentity,
    SitePolicy,
    TrustSpec,
    write_site_config,
)


def trusted_site_configs(
    folder: Path,
    protocol: Path,
    site_ids: list[str],
    server_pub: Path,
    board: PrivateKeys | None = None,
    **policy: Any,
) -> dict[str, Path]:
    """Sign ``protocol`` with ``board`` (default: a fresh governance key) and write one config
    per site trusting it, allowing the server key of ``server_pub`` and the ``policy``
    overrides. The tests' small protocols train without DP and unpaced, so their sites allow
    stages without DP (``allow_plain_stages``) unless a test says otherwise."""
    board = board or generate_keys("governance", "board")
    policy = {"allow_plain_stages": True} | policy
    add_signature(sign_protocol_hash(load_protocol(protocol).sha256, board),
                  signature_path(protocol))  # fmt: skip
    server = load_public_keys(server_pub)
    out = {}
    for sid in site_ids:
        # the site's own key, where the study wrote one beside the server's (it signs the
        # site's SecAgg+ keys when the protocol pins it)
        key = private_key_path(Path(server_pub).parent, sid)
        config = SiteConfig(
            site=SiteIdentity(id=sid, key=str(key.resolve()) if key.is_file() else None),
            trust=TrustSpec(governance_keys=(board.public.signing_fingerprint,)),
            policy=SitePolicy(allowed_recipient_keys=(server.encryption_fingerprint,), **policy),
        )
        out[sid] = write_site_config(config, Path(folder) / f"{sid}.toml")
    return out
