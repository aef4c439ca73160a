"""`securefed protocol new --deployment`: a complete deployment skeleton; with the parties' public
key files it passes `protocol check` with its SuperNodes ready, without them `protocol check`
names every missing key at once."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from securefed.cli import app
from securefed.crypto import generate_keys, write_keys
from securefed.crypto.node_key import new_node_key


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_skeleton_with_every_key_given_is_ready(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for role, pid in (("site", "a"), ("site", "b"), ("site", "c"), ("server", "server"),
                      ("governance", "board")):  # fmt: skip
        write_keys(generate_keys(role, pid), keys)
    for pid in ("a", "b", "c"):
        new_node_key(keys / pid)
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
