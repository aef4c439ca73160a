"""The BFV key dealing of a deployment (`securefed site he-key deal|open`): the decrypting site
seals the study's key to the keys the protocol pins for every other training site, each opens
only the pinned dealer's envelope, the coordinator's context holds no key; nothing is dealt or
opened by anyone else, to anyone else, or twice."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.flower import write_protocol
from support.trust import trusted_site_configs
from typer.testing import CliRunner

from securefed.cli import app
from securefed.crypto import generate_keys, write_keys
from securefed.crypto.bfv import load_aggregator_context, load_key

runner = CliRunner()
SITES = ("site-1", "site-2", "site-3")


def _study(tmp_path: Path) -> tuple[Path, dict[str, Path], Path]:
    """A signed bfv protocol pinning three sites' keys; their site configs; the key folder."""
    proto = write_protocol(tmp_path, aggregation="bfv")
    data = tomllib.loads(proto.read_text())
    keys = tmp_path / "keys"
    data["sites"] = []
    for p, sid in enumerate(SITES, start=1):
        k = generate_keys("site", sid)
        write_keys(k, keys / sid)
        data["sites"].append({"id": sid, "partition_id": p,
                              "signing_key": k.public.signing_fingerprint,
                              "encryption_key": k.public.encryption_fingerprint})  # fmt: skip
    proto.write_text(tomli_w.dumps(data))
    write_keys(generate_keys("server", "server"), tmp_path / "server")
    configs = trusted_site_configs(
        tmp_path / "configs", proto, list(SITES), tmp_path / "server" / "server.pub.json",
        max_total_epsilon=1.0, min_sites_per_aggregate=2, require_dp_training=False,
        require_version_pin=False, forbidden_release_modes=(), required_aggregation="secure",
    )  # fmt: skip
    public = tmp_path / "public"
    public.mkdir()
    for sid in SITES:
        (public / f"{sid}.pub.json").write_bytes((keys / sid / f"{sid}.pub.json").read_bytes())
    return proto, configs, keys


def _deal(proto: Path, configs: dict[str, Path], keys: Path, tmp: Path, sid: str = "site-1"):
    return runner.invoke(app, [
        "site", "he-key", "deal", str(proto), "--site-config", str(configs[sid]),
        "--key", str(keys / sid / f"{sid}.key"), "--public-keys", str(tmp / "public"),
        "--state", str(tmp / "state" / sid), "--out", str(tmp / "outbox"),
    ])  # fmt: skip


def _open(proto: Path, configs: dict[str, Path], keys: Path, tmp: Path, sid: str, envelope: Path):
    return runner.invoke(app, [
        "site", "he-key", "open", str(proto), "--envelope", str(envelope),
        "--site-config", str(configs[sid]), "--key", str(keys / sid / f"{sid}.key"),
        "--state", str(tmp / "state" / sid),
    ])  # fmt: skip


def test_every_training_site_gets_the_dealers_key_and_the_coordinator_none(tmp_path) -> None:
    proto, configs, keys = _study(tmp_path)
    res = _deal(proto, configs, keys, tmp_path)
    assert res.exit_code == 0, res.output
    outbox = tmp_path / "outbox"
    assert sorted(p.name for p in outbox.iterdir()) == [
        "aggregator.ctx", "site-2.bfv-key.sealed", "site-3.bfv-key.sealed",
    ]  # fmt: skip
    dealer_key = tmp_path / "state" / "site-1" / "he" / "bfv.key"
    assert dealer_key.stat().st_mode & 0o777 == 0o600
    for sid in ("site-2", "site-3"):
        res = _open(proto, configs, keys, tmp_path, sid, outbox / f"{sid}.bfv-key.sealed")
        assert res.exit_code == 0, res.output
        mine = tmp_path / "state" / sid / "he" / "bfv.key"
        assert mine.read_bytes() == dealer_key.read_bytes()
        assert mine.stat().st_mode & 0o777 == 0o600
    load_aggregator_context((outbox / "aggregator.ctx").read_bytes())  # keyless context
    with pytest.raises(Exception, match="aggregator context"):
        load_aggregator_context(dealer_key.read_bytes())
    load_key(dealer_key.read_bytes())
    # Never twice: a second dealing (or opening) would leave sites with different keys.
    again = _deal(proto, configs, keys, tmp_path)
    assert again.exit_code != 0
    assert "already holds a BFV key" in again.output
    twice = _open(proto, configs, keys, tmp_path, "site-2", outbox / "site-2.bfv-key.sealed")
    assert twice.exit_code != 0
    assert "already holds a BFV key" in twice.output


def test_only_the_pinned_dealer_deals_to_pinned_keys_and_a_site_opens_only_its_envelope(
    tmp_path,
) -> None:
    proto, configs, keys = _study(tmp_path)
    # site-2 is not the protocol's decryptor: it deals nothing.
    res = _deal(proto, configs, keys, tmp_path, sid="site-2")
    assert res.exit_code == 3
    assert "decryptor is site-1" in " ".join(res.output.split())
    # A recipient's public key that is not the pinned one: refused before any key is made.
    impostor = generate_keys("site", "site-3")
    write_keys(impostor, tmp_path / "impostor")
    (tmp_path / "public" / "site-3.pub.json").write_bytes(
        (tmp_path / "impostor" / "site-3.pub.json").read_bytes()
    )
    res = _deal(proto, configs, keys, tmp_path)
    assert res.exit_code == 3
    assert "not the keys the protocol pins for site-3" in res.output
    assert not (tmp_path / "state" / "site-1").exists()
    assert not (tmp_path / "outbox").exists()
    (tmp_path / "public" / "site-3.pub.json").write_bytes(
        (keys / "site-3" / "site-3.pub.json").read_bytes()
    )
    assert _deal(proto, configs, keys, tmp_path).exit_code == 0
    outbox = tmp_path / "outbox"
    # site-3 cannot open site-2's copy (sealed to site-2's key).
    res = _open(proto, configs, keys, tmp_path, "site-3", outbox / "site-2.bfv-key.sealed")
    assert res.exit_code == 3, res.output
    assert not (tmp_path / "state" / "site-3" / "he").exists()
    # A tampered envelope is refused.
    sealed = outbox / "site-3.bfv-key.sealed"
    raw = bytearray(sealed.read_bytes())
    raw[len(raw) // 2] ^= 1
    bad = tmp_path / "tampered.sealed"
    bad.write_bytes(bytes(raw))
    assert _open(proto, configs, keys, tmp_path, "site-3", bad).exit_code == 3
    assert _open(proto, configs, keys, tmp_path, "site-3", sealed).exit_code == 0
