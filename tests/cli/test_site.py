"""The site and server commands as a user runs them: keys, bounds, a local-DP release, collect,
ledger show/verify; refusals with their exit codes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import tomli_w
from support.trust import trusted_site_configs
from typer.testing import CliRunner

from securefed.cli import app
from securefed.protocol import load_protocol
from securefed.radiomics import FeatureTable, columns, save_table

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def _featdir(path: Path, seed: int, settings: dict) -> Path:
    cols = columns()
    rng = np.random.default_rng(seed)
    ids = [f"FeTS2022_{i:05d}" for i in range(1, 9)]
    parts = [1, 1, 1, 1, 2, 2, 2, 2]
    splits = ["train", "train", "val", "test"] * 2
    table = FeatureTable(ids, parts, splits, cols, rng.normal(size=(8, len(cols))))
    return save_table(table, path, {"settings": settings})


def test_local_dp_release_collect_and_ledger_by_cli(tmp_path: Path) -> None:
    settings = load_protocol(ROOT / "protocols" / "demo.toml").protocol.radiomics.model_dump(
        mode="json"
    )
    reference = _featdir(tmp_path / "reference", 99, settings)
    bounds = str(tmp_path / "bounds.json")
    out = _ok(["features", "bounds", "--features", str(reference), "--out", bounds,
               "--source", "test reference, not study data"])  # fmt: skip
    sha = next(tok for tok in out.split() if tok.startswith("sha256:"))
    data = tomllib.loads((ROOT / "protocols" / "demo.toml").read_text())
    data["privacy"]["total_epsilon"] = 3.0
    data["release"] = {"mode": "local-dp", "mechanism": "gaussian", "epsilon": 2.0,
                       "delta": 1e-6, "bounds": {"file": "bounds.json", "sha256": sha[:71]},
                       "projection": "random", "dimension": 6}  # fmt: skip
    data["clustering"]["scaling"] = "declared-bounds"
    proto = tmp_path / "study.toml"
    proto.write_bytes(tomli_w.dumps(data).encode())
    keys = tmp_path / "keys"
    for role, pid in (("server", "server"), ("site", "site-1"), ("site", "site-2")):
        _ok(["keys", "new", "--role", role, "--id", pid, "--out", str(keys)])
    featdir = _featdir(tmp_path / "feat", 1, settings)
    # Each site trusts the board that signed the protocol, with a policy that allows this study.
    configs = trusted_site_configs(
        tmp_path / "configs", proto, ["site-1", "site-2"], keys / "server.pub.json",
        max_total_epsilon=3.0, min_sites_per_aggregate=2, require_dp_training=False,
        require_version_pin=False,
    )  # fmt: skip
    release = [
        "features",
        "release",
        "--features",
        str(featdir),
        "--protocol",
        str(proto),
        "--server-key",
        str(keys / "server.pub.json"),
        "--out",
        str(tmp_path / "inbox"),
    ]
    # Without a site configuration, or with another site's, nothing is released.
    assert runner.invoke(app, [*release, "--key", str(keys / "site-1.key"), "--state",
                               str(tmp_path / "site-1")]).exit_code == 2  # fmt: skip
    wrong = runner.invoke(app, [*release, "--key", str(keys / "site-1.key"), "--state",
                                str(tmp_path / "site-1"), "--site-config",
                                str(configs["site-2"])])  # fmt: skip
    assert wrong.exit_code == 3
    assert not (tmp_path / "inbox").exists()
    for site in ("site-1", "site-2"):
        _ok([*release, "--key", str(keys / f"{site}.key"), "--state", str(tmp_path / site),
             "--site-config", str(configs[site])])  # fmt: skip
    shown = _ok(["ledger", "show", str(tmp_path / "site-1")])
    assert "features" in shown
    _ok(["ledger", "verify", str(tmp_path / "site-1")])
    # A second release of more epsilon than is left: refused (exit 2), nothing written.
    featdir2 = _featdir(tmp_path / "feat2", 2, settings)
    again = runner.invoke(app, [
        "features", "release", "--features", str(featdir2), "--protocol", str(proto),
        "--key", str(keys / "site-1.key"), "--server-key", str(keys / "server.pub.json"),
        "--out", str(tmp_path / "inbox2"), "--state", str(tmp_path / "site-1"),
        "--site-config", str(configs["site-1"])])  # fmt: skip
    assert again.exit_code == 2, again.output
    assert not list((tmp_path / "inbox2").glob("*.env"))
    collect = ["server", "collect", "--inbox", str(tmp_path / "inbox"), "--protocol", str(proto),
               "--key", str(keys / "server.key"), "--out", str(tmp_path / "collected"),
               "--state", str(tmp_path / "server-state"),
               "--site-key", str(keys / "site-1.pub.json"),
               "--site-key", str(keys / "site-2.pub.json")]  # fmt: skip
    # Tamper with one envelope: exit 3, nothing collected.
    env = tmp_path / "inbox" / "site-2.features.env"
    good = env.read_bytes()
    env.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    bad = runner.invoke(app, collect)
    assert bad.exit_code == 3, bad.output
    assert "site-2.features.env" in bad.output
    assert not (tmp_path / "collected").exists()
    env.write_bytes(good)
    out = _ok(collect)
    assert "collected 8 case(s) x 6 values from 2 site(s)" in " ".join(out.split())


def test_plain_release_has_no_ledger_and_an_empty_inbox_is_a_user_error(tmp_path: Path) -> None:
    """The quickstart's order: a plain release, then `ledger verify` on the site's folder (no DP
    charge: exit 0, saying so), then `server collect` (an empty inbox: exit 2, not 3)."""
    proto = tmp_path / "study.toml"
    proto.write_bytes((ROOT / "protocols" / "demo.toml").read_bytes())
    settings = load_protocol(proto).protocol.radiomics.model_dump(mode="json")
    keys = tmp_path / "keys"
    for role, pid in (("server", "server"), ("site", "site-1")):
        _ok(["keys", "new", "--role", role, "--id", pid, "--out", str(keys)])
    configs = trusted_site_configs(
        tmp_path / "configs", proto, ["site-1"], keys / "server.pub.json",
        max_total_epsilon=8.0, min_sites_per_aggregate=2, require_dp_training=False,
        require_version_pin=False, forbidden_release_modes=(),
    )  # fmt: skip
    state = tmp_path / "site-1-state"
    collect = ["server", "collect", str(proto), "--key", str(keys / "server.key"), "--out",
               str(tmp_path / "collected"), "--state", str(tmp_path / "server-state"),
               "--site-key", str(keys / "site-1.pub.json")]  # fmt: skip
    for inbox in (tmp_path / "absent", tmp_path / "inbox"):
        empty = runner.invoke(app, [*collect, "--inbox", str(inbox)])
        assert empty.exit_code == 2, empty.output
        said = " ".join(empty.output.split())
        assert "no *.env envelope" in said or "no such inbox folder" in said, said
        (tmp_path / "inbox").mkdir(exist_ok=True)
    assert not (tmp_path / "collected").exists()
    out = _ok(["features", "release", str(proto), "--features",
               str(_featdir(tmp_path / "feat", 1, settings)), "--key", str(keys / "site-1.key"),
               "--server-key", str(keys / "server.pub.json"), "--out", str(tmp_path / "inbox"),
               "--state", str(state), "--site-config", str(configs["site-1"])])  # fmt: skip
    assert "no DP: plain release" in " ".join(out.split())
    assert state.is_dir()
    assert not (state / "ledger.jsonl").exists()
    for command in ("show", "verify"):
        said = " ".join(_ok(["ledger", command, str(state)]).split())
        assert said.startswith("no DP charge (plain release):"), said
    # Not a site's folder at all, or a ledger the server saw and that is gone: still refused.
    assert runner.invoke(app, ["ledger", "verify", str(tmp_path / "nowhere")]).exit_code == 2
    assert runner.invoke(app, ["ledger", "show", str(state / "ledger.jsonl")]).exit_code == 2
    gone = runner.invoke(app, ["ledger", "verify", str(state), "--server-head", "1:sha256:00"])
    assert gone.exit_code == 3
    assert "deleted" in gone.output
    out = _ok([*collect, "--inbox", str(tmp_path / "inbox")])
    assert "collected 4 case(s)" in " ".join(out.split())


def test_site_init_takes_a_server_key_file_or_a_fingerprint_and_names_a_bad_value(
    tmp_path: Path,
) -> None:
    """--allow-recipient: a fingerprint as given; a server's key file gives its encryption
    fingerprint (said on screen); a mistyped fingerprint, a missing file or another party's key
    is a user error naming the option and the expected form (exit 2), not a traceback."""
    from securefed.crypto import load_public_keys

    keys = tmp_path / "keys"
    for role, pid in (("governance", "board"), ("server", "server"), ("site", "site-1")):
        _ok(["keys", "new", "--role", role, "--id", pid, "--out", str(keys)])
    server = load_public_keys(keys / "server.pub.json").encryption_fingerprint
    init = ["site", "init", "--site-id", "site-1", "--trust", str(keys / "board.pub.json")]

    def allowed(out: Path) -> list[str]:
        return list(tomllib.loads(out.read_text())["policy"]["allowed_recipient_keys"])

    said = " ".join(_ok([*init, "--allow-recipient", str(keys / "server.pub.json"), "--out",
                         str(tmp_path / "a.toml")]).split())  # fmt: skip
    assert allowed(tmp_path / "a.toml") == [server]
    assert f"taking the encryption key of server 'server', {server}" in said
    _ok([*init, "--allow-recipient", server, "--out", str(tmp_path / "b.toml")])
    assert allowed(tmp_path / "b.toml") == [server]
    for bad, why in (
        (server[:-1], "it has 63 characters after sha256:, not 64"),
        (server.upper().replace("SHA256", "sha256"), "not all lowercase hex"),
        (str(tmp_path / "nope.pub.json"), "neither a fingerprint nor a readable file"),
        (str(keys / "site-1.pub.json"), "not a server's public key file"),
    ):
        out = tmp_path / "bad.toml"
        res = runner.invoke(app, [*init, "--allow-recipient", bad, "--out", str(out)])
        said = " ".join(res.output.split())
        assert res.exit_code == 2, said
        assert "--allow-recipient" in said and why in said, said
        assert "sha256: and 64 lowercase hex digits" in said
        assert "<id>.pub.json" in said
        assert "Traceback" not in said
        assert "internal error" not in said
        assert not out.exists()
