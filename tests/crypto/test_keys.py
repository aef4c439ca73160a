"""Party keys: generation, files (0600, exclusive, passphrase), loading errors."""

from __future__ import annotations

import json
import os
import stat
import warnings

import pytest

from securefed.crypto import (
    PublicKeys,
    generate_keys,
    load_private_keys,
    load_public_keys,
    write_keys,
)
from securefed.errors import KeyError_


@pytest.mark.parametrize("kem", ["x25519", "mlkem768-x25519"])
def test_roundtrip_plain(tmp_path, kem):
    keys = generate_keys("site", "site-1", kem)
    paths = write_keys(keys, tmp_path)
    assert stat.S_IMODE(os.stat(paths.private).st_mode) == 0o600
    loaded = load_private_keys(paths.private, role="site")
    assert loaded.public == keys.public
    assert loaded.public.signing_fingerprint.startswith("sha256:")
    assert load_public_keys(paths.public) == keys.public
    # the directory form finds the single key
    assert load_private_keys(tmp_path).public == keys.public
    assert "secret" in repr(loaded)
    assert "ed25519" not in repr(loaded).lower()


def test_passphrase(tmp_path):
    keys = generate_keys("server", "server", "mlkem768-x25519")
    paths = write_keys(keys, tmp_path, passphrase=b"correct horse")
    text = paths.private.read_text()
    assert "secrets" not in json.loads(text)
    assert load_private_keys(paths.private, b"correct horse").public == keys.public
    with pytest.raises(KeyError_, match="wrong passphrase"):
        load_private_keys(paths.private, b"wrong")
    with pytest.raises(KeyError_, match="passphrase-protected"):
        load_private_keys(paths.private)


def test_passphrase_given_for_plain_key(tmp_path):
    paths = write_keys(generate_keys("site", "s"), tmp_path)
    with pytest.raises(KeyError_, match="not passphrase-protected"):
        load_private_keys(paths.private, b"x")


def test_wrong_role_missing_and_corrupt(tmp_path):
    paths = write_keys(generate_keys("site", "s"), tmp_path)
    with pytest.raises(KeyError_, match="governance keys are needed"):
        load_private_keys(paths.private, role="governance")
    with pytest.raises(KeyError_, match="not found"):
        load_private_keys(tmp_path / "nope.key")
    with pytest.raises(KeyError_, match="not a securefed private key"):
        load_private_keys(paths.public)
    bad = tmp_path / "bad.key"
    bad.write_text("{not json")
    with pytest.raises(KeyError_, match="invalid JSON"):
        load_private_keys(bad)


def test_never_overwrites(tmp_path):
    write_keys(generate_keys("site", "s"), tmp_path)
    with pytest.raises(KeyError_, match="already exists"):
        write_keys(generate_keys("site", "s"), tmp_path)


def test_mismatched_public_part_rejected(tmp_path):
    paths = write_keys(generate_keys("site", "s"), tmp_path)
    other = generate_keys("site", "s")
    doc = json.loads(paths.private.read_text())
    doc["public"] = other.public.to_json()
    paths.private.chmod(0o600)
    paths.private.write_text(json.dumps(doc))
    with pytest.raises(KeyError_, match="do not match"):
        load_private_keys(paths.private)


def test_tampered_encrypted_key_rejected(tmp_path):
    paths = write_keys(generate_keys("site", "s"), tmp_path, passphrase=b"pw")
    doc = json.loads(paths.private.read_text())
    doc["public"]["role"] = "server"  # swapping the role must break the AEAD binding
    doc["public"]["signing_fingerprint"] = None
    del doc["public"]["signing_fingerprint"]
    paths.private.write_text(json.dumps(doc))
    with pytest.raises(KeyError_):
        load_private_keys(paths.private, b"pw")


def test_loose_permissions_are_refused(tmp_path):
    paths = write_keys(generate_keys("site", "s"), tmp_path)
    for mode in (0o644, 0o640, 0o602):
        paths.private.chmod(mode)
        with pytest.raises(KeyError_, match="chmod 600"):
            load_private_keys(paths.private)
    paths.private.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_private_keys(paths.private)


def test_bad_identity():
    with pytest.raises(KeyError_, match="role"):
        generate_keys("admin", "x")  # type: ignore[arg-type]
    with pytest.raises(KeyError_, match="id"):
        generate_keys("site", "../etc")
    with pytest.raises(KeyError_, match="kem"):
        generate_keys("site", "s", "rsa")  # type: ignore[arg-type]


def test_public_bundle_fingerprint_mismatch(tmp_path):
    keys = generate_keys("site", "s")
    doc = keys.public.to_json()
    doc["signing_fingerprint"] = "sha256:" + "0" * 64
    with pytest.raises(KeyError_, match="does not match"):
        PublicKeys.from_json(doc)
