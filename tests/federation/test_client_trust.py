"""The site's Flower client accepts its protocol with its own trust and policy before touching
data (node config ``site-config``): refused when unsigned, when the node claims another site's
partition, and when a deployment protocol comes without a site configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.flower import make_task, write_assignments, write_protocol
from support.trust import trusted_site_configs

from securefed.crypto import generate_keys, write_keys
from securefed.errors import SiteTrustError
from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings

LAYOUT = {1: [("train", 0), ("val", 0)], 2: [("train", 0), ("val", 0)]}


def _setup(tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    proto = write_protocol(tmp_path)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    write_keys(generate_keys("server", "server"), tmp_path / "keys")
    configs = trusted_site_configs(
        tmp_path / "configs", proto, ["site-1", "site-2"], tmp_path / "keys" / "server.pub.json",
        max_total_epsilon=1.0, min_sites_per_aggregate=2, require_dp_training=False,
        require_version_pin=False, forbidden_release_modes=(),
    )  # fmt: skip
    return proto, asg, configs


def _client(proto: Path, asg: Path, pid: int, config: Path | None) -> SiteClient:
    site = SiteSettings(pid, str(proto.parent), str(proto), assignments=str(asg),
                        site_config=str(config) if config else "")  # fmt: skip
    return SiteClient(make_task(), site)


def test_client_accepts_a_signed_protocol_and_refuses_a_foreign_partition(tmp_path: Path) -> None:
    proto, asg, configs = _setup(tmp_path)
    client = _client(proto, asg, 1, configs["site-1"])
    assert client.get_properties({})["protocol-hash"] == client.loaded.sha256
    with pytest.raises(SiteTrustError, match="partition-id 2 is not the partition of site-1"):
        _client(proto, asg, 2, configs["site-1"])
    # Unsigned (the signature removed): refused before any data is read.
    proto.with_name(proto.name + ".sig").unlink()
    with pytest.raises(SiteTrustError, match="unsigned"):
        _client(proto, asg, 2, configs["site-2"])


def test_a_deployment_protocol_needs_the_site_configuration(tmp_path: Path) -> None:
    proto, asg, _ = _setup(tmp_path)
    data = tomllib.loads(proto.read_text())
    keys = {p: generate_keys("site", f"site-{p}") for p in (1, 2, 3)}
    server, board = generate_keys("server", "server"), generate_keys("governance", "board")
    data["study"]["mode"] = "deployment"
    data["sites"] = [{"id": f"site-{p}", "partition_id": p,
                      "signing_key": k.public.signing_fingerprint,
                      "encryption_key": k.public.encryption_fingerprint}
                     for p, k in keys.items()]  # fmt: skip
    data["server"] = {"id": "server", "signing_key": server.public.signing_fingerprint,
                      "encryption_key": server.public.encryption_fingerprint}  # fmt: skip
    data["governance"] = {"signing_key": board.public.signing_fingerprint}
    deployment = tmp_path / "deployment.toml"
    deployment.write_bytes(tomli_w.dumps(data).encode())
    with pytest.raises(SiteTrustError, match="node config 'site-config'"):
        _client(deployment, asg, 1, None)
