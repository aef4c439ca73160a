"""The site's signing key from SITE.toml (securefed.trust.site_key): used only when it is the key
the accepted protocol pins for the site."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from support.flower import write_protocol

from securefed.crypto import generate_keys, write_keys
from securefed.errors import KeyError_, SiteTrustError
from securefed.protocol.schema import Protocol
from securefed.trust import SiteConfig, SiteIdentity, TrustSpec
from securefed.trust.site_key import pinned_site_keys, site_signing_key


def _protocol(pinned: str | None, folder: Path) -> Protocol:
    data = tomllib.loads(write_protocol(folder).read_text())
    site: dict[str, object] = {"id": "site-1", "partition_id": 1}
    if pinned is not None:
        site["signing_key"] = pinned
    data["sites"] = [site, *({"id": f"site-{p}", "partition_id": p} for p in (2, 3))]
    return Protocol.model_validate(data)


def _config(tmp_path: Path, **site) -> tuple[SiteConfig, Path]:
    trust = TrustSpec(governance_keys=("sha256:" + "0" * 64,))
    return SiteConfig(site=SiteIdentity(id="site-1", **site), trust=trust), tmp_path / "SITE.toml"


def test_the_pinned_key_is_loaded_relative_to_site_toml(tmp_path: Path) -> None:
    keys = generate_keys("site", "site-1")
    write_keys(keys, tmp_path / "keys")
    protocol = _protocol(keys.public.signing_fingerprint, tmp_path)
    assert pinned_site_keys(protocol) == {"site-1": keys.public.signing_fingerprint}
    config, path = _config(tmp_path, key="keys/site-1.key")
    got = site_signing_key(config, path, protocol)
    assert got is not None
    assert got.public.signing_fingerprint == keys.public.signing_fingerprint


def test_no_pinned_key_needs_no_key(tmp_path: Path) -> None:
    config, path = _config(tmp_path)
    assert site_signing_key(config, path, _protocol(None, tmp_path)) is None


def test_a_missing_or_other_key_is_refused(tmp_path: Path) -> None:
    pinned = generate_keys("site", "site-1")
    other = generate_keys("site", "site-1")
    write_keys(other, tmp_path / "keys")
    protocol = _protocol(pinned.public.signing_fingerprint, tmp_path)
    config, path = _config(tmp_path)
    with pytest.raises(SiteTrustError, match="site.key names no private key"):
        site_signing_key(config, path, protocol)
    config, path = _config(tmp_path, key="keys/site-1.key")
    with pytest.raises(SiteTrustError, match="is not the signing key the protocol pins"):
        site_signing_key(config, path, protocol)
    config, path = _config(tmp_path, key="keys/absent.key")
    with pytest.raises(KeyError_):
        site_signing_key(config, path, protocol)


def test_an_unnamed_key_is_none_where_it_is_not_required(tmp_path: Path) -> None:
    """BFV without DP signs nothing: a SuperNode may start without site.key; SecAgg+ may not."""
    pinned = generate_keys("site", "site-1")
    protocol = _protocol(pinned.public.signing_fingerprint, tmp_path)
    config, path = _config(tmp_path)
    assert site_signing_key(config, path, protocol, required=False) is None
    other = generate_keys("site", "site-1")
    write_keys(other, tmp_path / "keys")
    config, path = _config(tmp_path, key="keys/site-1.key")
    with pytest.raises(SiteTrustError, match="is not the signing key"):
        site_signing_key(config, path, protocol, required=False)  # a wrong key never passes
