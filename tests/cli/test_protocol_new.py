"""`securefed protocol new --deployment`: a complete deployment skeleton; with the parties' public
key files it passes `protocol check` with its SuperNodes ready, without them `protocol check`
names every missing key at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from securefed.cli import app
from securefed.crypto import generate_keys, write_keys
from securefed.crypto.node_key import new_node_key


def _flat(text: str) -> str:
    return " ".join(text.split())


def _every_key(keys: Path) -> Path:
    """Sites a, b, c (party keys and node keys), the server and the board, in ``keys``."""
    for role, pid in (("site", "a"), ("site", "b"), ("site", "c"), ("server", "server"),
                      ("governance", "board")):  # fmt: skip
        write_keys(generate_keys(role, pid), keys)
    for pid in ("a", "b", "c"):
        new_node_key(keys / pid)
    return keys


def test_a_skeleton_with_every_key_given_is_ready(tmp_path: Path) -> None:
    keys = _every_key(tmp_path / "keys")
    out = tmp_path / "p.toml"
    runner = CliRunner()
    res = runner.invoke(app, ["protocol", "new", "--deployment", "--sites", "a,b,c", "--keys",
                              str(keys), "--reply-slot-s", "300", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "0 key(s) still to fill" in _flat(res.output)
    assert "# TODO " not in out.read_text()
    check = runner.invoke(app, ["protocol", "check", str(out)])
    assert check.exit_code == 0, check.output
    assert "supernode ready: 3 node keys pinned, 1 approved app bundle(s)" in _flat(check.output)
    # never overwritten
    again = runner.invoke(app, ["protocol", "new", "--deployment", "--sites", "a,b,c", "--out",
                                str(out)])  # fmt: skip
    assert again.exit_code != 0


def test_a_bare_skeleton_names_every_missing_key_at_once(tmp_path: Path) -> None:
    out = tmp_path / "p.toml"
    runner = CliRunner()
    res = runner.invoke(app, ["protocol", "new", "--deployment", "--sites", "h1,h2,h3",
                              "--from", "demo-secure-aggregate", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "12 key(s) still to fill" in _flat(res.output)
    check = _flat(runner.invoke(app, ["protocol", "check", str(out)]).output)
    for part in ("sites.h1: needs signing_key", "sites.h3", "server: needs",
                 "governance.signing_key"):  # fmt: skip
        assert part in check, check
    bad = runner.invoke(app, ["protocol", "new", "--sites", "a,b", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "--deployment" in _flat(bad.output)


@pytest.mark.parametrize("slot", [None, "0", "600", "1800"])
@pytest.mark.parametrize("base", ["demo", "demo-secure-aggregate"])
def test_the_skeleton_is_valid_for_any_reply_slot(
    tmp_path: Path, base: str, slot: str | None
) -> None:
    """docs/deployment.md's `--reply-slot-s 600` (also the default) on the demo base, whose
    secure aggregation waits 600 s: the skeleton raises that wait above two slots instead of
    writing a protocol `protocol check` refuses, and copies the files the base pins next to the
    skeleton (both found by following the walkthrough)."""
    keys = _every_key(tmp_path / "keys")
    out = tmp_path / "p.toml"
    args = ["protocol", "new", "--deployment", "--sites", "a,b,c", "--from", base, "--keys",
            str(keys), "--out", str(out)] + (["--reply-slot-s", slot] if slot else [])  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    check = runner.invoke(app, ["protocol", "check", str(out)])
    if slot == "0" and base == "demo-secure-aggregate":  # a finite epsilon must pace replies
        assert check.exit_code == 2 and "reply_slot_s" in _flat(check.output)
        return
    assert check.exit_code == 0, check.output  # the pinned bounds file was copied next to it
    loaded = tomllib.loads(out.read_text())
    wait = loaded.get("secure_aggregation", {}).get("timeout_s", 120.0)
    assert wait > 2 * loaded["training"]["reply_slot_s"]


def test_a_base_that_does_not_load_leaves_nothing_written(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    data = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "protocols" / "demo.toml").read_text()
    )
    data["training"]["global_rounds"] = -1  # parses, fails the schema
    import tomli_w

    base.write_bytes(tomli_w.dumps(data).encode())
    out = tmp_path / "p.toml"
    res = CliRunner().invoke(app, ["protocol", "new", "--deployment", "--sites", "a,b,c",
                                   "--from", str(base), "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert not out.exists()
