"""CLI: `keys new|show`, `protocol sign|verify` (on a local typer app)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import typer
from typer.testing import CliRunner

from securefed.cli import keys as keys_cli
from securefed.cli import protocol as protocol_cli
from securefed.crypto import load_private_keys, verify_protocol_file
from securefed.errors import ProtocolSignatureError

runner = CliRunner()


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


PROTOCOL = """schema_version = 1
[study]
name = "t"
mode = "simulation"
[privacy]
total_epsilon = 1.0
{governance}
"""


@pytest.fixture
def app():
    app = typer.Typer()
    protocol_cli.register(app)
    keys_cli.register(app)
    return app


def _new(app, tmp_path, role, pid, *extra):
    result = runner.invoke(
        app, ["keys", "new", "--role", role, "--id", pid, "--out", str(tmp_path / pid), *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


def _fingerprint(output: str, field: str) -> str:
    line = next(x for x in output.splitlines() if x.startswith(field + " = "))
    return line.split('"')[1]


def test_keys_new_and_show(app, tmp_path):
    pw = tmp_path / "pw.txt"
    pw.write_text("s3cret\n")
    out = _new(
        app, tmp_path, "site", "site-1", "--kem", "mlkem768-x25519", "--passphrase-file", str(pw)
    )
    fp = _fingerprint(out, "signing_key")
    key = tmp_path / "site-1" / "site-1.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert load_private_keys(key, b"s3cret").public.signing_fingerprint == fp
    shown = runner.invoke(app, ["keys", "show", str(tmp_path / "site-1" / "site-1.pub.json")])
    assert shown.exit_code == 0
    assert fp in _flat(shown.output)
    assert "encryption_key" in _flat(shown.output)
    again = runner.invoke(
        app, ["keys", "new", "--role", "site", "--id", "site-1", "--out", str(tmp_path / "site-1")]
    )
    assert again.exit_code == 2
    assert "already exists" in _flat(again.output)


def test_keys_new_bad_role(app, tmp_path):
    result = runner.invoke(
        app, ["keys", "new", "--role", "admin", "--id", "x", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    # --role is a choice (KeyRole): click refuses the value and lists the roles
    flat = _flat(result.output.replace("│", " "))
    assert "'admin' is not one of 'site', 'server', 'governance'" in flat


def test_sign_and_verify(app, tmp_path):
    out = _new(app, tmp_path, "governance", "board")
    fp = _fingerprint(out, "signing_key")
    proto = tmp_path / "study.toml"
    proto.write_text(PROTOCOL.format(governance=f'[governance]\nsigning_key = "{fp}"'))
    key = tmp_path / "board" / "board.key"
    signed = runner.invoke(app, ["protocol", "sign", str(proto), "--key", str(key)])
    assert signed.exit_code == 0, signed.output
    sig = tmp_path / "study.toml.sig"
    assert json.loads(sig.read_text())["signer_fingerprint"] == fp
    ok = runner.invoke(app, ["protocol", "verify", str(proto)])
    assert ok.exit_code == 0
    assert "OK sha256:" in _flat(ok.output)
    assert verify_protocol_file(proto).sha256.startswith("sha256:")

    # a meaningful change to the protocol breaks the signature (exit 3)
    proto.write_text(proto.read_text().replace("total_epsilon = 1.0", "total_epsilon = 9.0"))
    bad = runner.invoke(app, ["protocol", "verify", str(proto)])
    assert bad.exit_code == 3
    assert "changed after signing" in _flat(bad.output)
    with pytest.raises(ProtocolSignatureError):
        verify_protocol_file(proto)


def test_sign_with_wrong_key_and_missing_fingerprint(app, tmp_path):
    fp = _fingerprint(_new(app, tmp_path, "governance", "board"), "signing_key")
    _new(app, tmp_path, "governance", "other")
    _new(app, tmp_path, "site", "site-1")
    proto = tmp_path / "study.toml"
    proto.write_text(PROTOCOL.format(governance=f'[governance]\nsigning_key = "{fp}"'))
    wrong = runner.invoke(
        app, ["protocol", "sign", str(proto), "--key", str(tmp_path / "other" / "other.key")]
    )
    # Another governance key may co-sign (the sites decide whom they trust), but the board's
    # consistency check against the pinned key then fails.
    assert wrong.exit_code == 0
    assert "co-signer" in _flat(wrong.output)
    pinned = runner.invoke(app, ["protocol", "verify", str(proto)])
    assert pinned.exit_code == 3
    assert "signed by key" in _flat(pinned.output)
    site = runner.invoke(
        app, ["protocol", "sign", str(proto), "--key", str(tmp_path / "site-1" / "site-1.key")]
    )
    assert site.exit_code == 2
    assert "governance keys are needed" in _flat(site.output)

    # a signature made by another governance key is refused at verification
    unpinned = tmp_path / "unpinned.toml"
    unpinned.write_text(PROTOCOL.format(governance=""))
    signed = runner.invoke(
        app,
        [
            "protocol",
            "sign",
            str(unpinned),
            "--key",
            str(tmp_path / "other" / "other.key"),
            "--out",
            str(tmp_path / "study.toml.sig"),
        ],
    )
    assert signed.exit_code == 0
    res = runner.invoke(app, ["protocol", "verify", str(unpinned)])
    assert res.exit_code == 3
    assert "not found" in _flat(res.output)
    res = runner.invoke(
        app, ["protocol", "verify", str(unpinned), "--sig", str(tmp_path / "study.toml.sig")]
    )
    assert res.exit_code == 3
    assert "governance.signing_key is not set" in _flat(res.output)
    res = runner.invoke(app, ["protocol", "verify", str(proto)])
    assert res.exit_code == 3  # signs another protocol's hash


def test_tampered_signature_bytes(app, tmp_path):
    import base64

    fp = _fingerprint(_new(app, tmp_path, "governance", "board"), "signing_key")
    proto = tmp_path / "study.toml"
    proto.write_text(PROTOCOL.format(governance=f'[governance]\nsigning_key = "{fp}"'))
    key = tmp_path / "board" / "board.key"
    assert runner.invoke(app, ["protocol", "sign", str(proto), "--key", str(key)]).exit_code == 0
    sig = tmp_path / "study.toml.sig"
    doc = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[5] ^= 1
    doc["signature"] = base64.b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(doc))
    res = runner.invoke(app, ["protocol", "verify", str(proto)])
    assert res.exit_code == 3
    assert "does not verify" in _flat(res.output)


def test_keys_show_reads_node_keys_and_bfv_files(app, tmp_path):
    """Every key file securefed writes: node.pub (it used to fail with "invalid JSON"),
    node.key, a BFV key and its aggregator context; nothing secret is printed."""
    from securefed.crypto.bfv import make_key
    from securefed.crypto.node_key import new_node_key

    runner = CliRunner()
    key, pub, fp = new_node_key(tmp_path / "node")
    for path in (pub, key):
        shown = runner.invoke(app, ["keys", "show", str(path)])
        assert shown.exit_code == 0, shown.output
        assert fp in _flat(shown.output)
        assert "SuperNode node key" in shown.output
    bfv = make_key()
    (tmp_path / "bfv.key").write_bytes(bfv.to_bytes())
    (tmp_path / "aggregator.ctx").write_bytes(bfv.aggregator_bytes())
    shown = runner.invoke(app, ["keys", "show", str(tmp_path / "bfv.key")])
    assert shown.exit_code == 0
    assert "BFV secret key" in shown.output
    assert bfv.key_id.hex() in shown.output
    shown = runner.invoke(app, ["keys", "show", str(tmp_path / "aggregator.ctx")])
    assert shown.exit_code == 0
    assert "aggregator context" in shown.output
