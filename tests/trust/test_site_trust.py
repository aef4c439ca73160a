"""Site-held trust and policy (governance issue, part 1): `securefed site init|verify` and
securefed.trust. Each refusal: unsigned, tampered signature, edited after signing, an edited
protocol re-signed with the editor's own key, too few trusted signers, another securefed version,
the site's policy, a site the protocol does not list; a formatting change is not a tamper.
Contract: exit 0 printing the accepted sha256, 3 naming the failed check, 2 for a bad config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from securefed import __version__
from securefed.cli import app
from securefed.crypto import generate_keys, sign_protocol_hash, write_keys
from securefed.errors import SiteTrustError
from securefed.protocol import load_protocol
from securefed.trust import load_site_config, policy_violations, verify_for_site

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _keys(tmp: Path, *names: str, role: str = "governance") -> dict[str, Path]:
    out = {}
    for name in names:
        write_keys(generate_keys(role, name), tmp / "keys")  # type: ignore[arg-type]
        out[name] = tmp / "keys" / f"{name}.key"
    return out


SERVER = generate_keys("server", "server")


def _protocol(tmp: Path, **changes: str) -> Path:
    values = {
        "mode": "simulation", "total_epsilon": "1.0", "aggregation": "secagg+",
        "min_sites": "3", "dp": "true", "version": f'"{__version__}"', "dp_eps": "1.0",
    } | changes  # fmt: skip
    text = f"""schema_version = 1
# the study protocol under review
[study]
name = "trust-test"
mode = "{values["mode"]}"
[privacy]
total_epsilon = {values["total_epsilon"]}
[governance]
securefed_version = {values["version"]}
[server]
id = "server"
encryption_key = "{SERVER.public.encryption_fingerprint}"
signing_key = "{SERVER.public.signing_fingerprint}"
[release]
mode = "plain"
[training]
aggregation = "{values["aggregation"]}"
min_sites_per_aggregate = {values["min_sites"]}
baselines = ["local", "fedavg"]
local_steps = 5
[training.dp_sgd]
enabled = {values["dp"]}
amplification = "none"
epsilon = {values["dp_eps"]}
[secure_aggregation]
num_shares = 3
reconstruction_threshold = 2
"""
    if values["version"] == "none":
        text = text.replace("securefed_version = none\n", "")
    path = tmp / "protocol.toml"
    path.write_text(text)
    return path


def _sign(protocol: Path, key: Path) -> None:
    res = runner.invoke(app, ["protocol", "sign", str(protocol), "--key", str(key)])
    assert res.exit_code == 0, res.output


def _init(tmp: Path, *trusted: str, threshold: int = 1, policy: dict | None = None) -> Path:
    out = tmp / "site-1.toml"
    args = ["site", "init", "--site-id", "site-1", "--out", str(out),
            "--threshold", str(threshold),
            "--allow-recipient", SERVER.public.encryption_fingerprint]  # fmt: skip
    for name in trusted:
        args += ["--trust", str(tmp / "keys" / f"{name}.pub.json")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    # This site allows plain features and stages without DP (the protocols here release plain
    # features and leave reply timing unpaced); its max_total_epsilon bounds the DP stages.
    text = out.read_text().replace('forbidden_release_modes = ["plain"]',
                                   "forbidden_release_modes = []")  # fmt: skip
    text = text.replace("allow_plain_stages = false", "allow_plain_stages = true")
    for key, value in (policy or {}).items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        text = "\n".join(lines).replace("[policy]", f"[policy]\n{key} = {value}") + "\n"
    out.write_text(text)
    return out


def _verify(protocol: Path, config: Path):  # noqa: ANN202
    return runner.invoke(app, ["site", "verify", str(protocol), "--site-config", str(config)])


def test_init_writes_the_strictest_policy_and_it_parses(tmp_path: Path) -> None:
    _keys(tmp_path, "board")
    out = tmp_path / "strict.toml"
    res = runner.invoke(app, ["site", "init", "--site-id", "site-1", "--out", str(out),
                              "--trust", str(tmp_path / "keys" / "board.pub.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    config = load_site_config(out)
    policy = config.policy
    assert policy.forbidden_release_modes == ("plain",)
    assert policy.require_dp_training
    assert policy.allowed_recipient_keys == ()
    assert not policy.allow_unsigned_simulation
    assert not policy.allow_plain_stages
    assert "# Largest effective epsilon" in out.read_text()  # every field documented
    again = runner.invoke(app, ["site", "init", "--site-id", "site-1", "--out", str(out),
                                "--trust", str(tmp_path / "keys" / "board.pub.json")])  # fmt: skip
    assert again.exit_code == 2
    assert "refusing to overwrite" in _flat(again.output)
    _keys(tmp_path, "site-9", role="site")
    wrong = runner.invoke(app, ["site", "init", "--site-id", "site-1", "--out",
                                str(tmp_path / "x.toml"), "--trust",
                                str(tmp_path / "keys" / "site-9.pub.json")])  # fmt: skip
    assert wrong.exit_code == 2
    assert "not a governance key" in _flat(wrong.output)


def test_signed_protocol_is_accepted_and_formatting_is_no_tamper(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "board")
    protocol = _protocol(tmp_path)
    _sign(protocol, keys["board"])
    config = _init(tmp_path, "board")
    res = _verify(protocol, config)
    assert res.exit_code == 0, res.output
    sha = load_protocol(protocol).sha256
    assert res.output.strip().splitlines()[-1] == sha
    # Comments, blank lines and key order do not change the canonical hash.
    protocol.write_text("# reviewed by the board\n\n" + protocol.read_text().replace(
        "# the study protocol under review\n", ""))  # fmt: skip
    assert _verify(protocol, config).exit_code == 0


def test_each_refusal_names_its_check(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "board", "editor")
    protocol = _protocol(tmp_path)
    config = _init(tmp_path, "board")
    res = _verify(protocol, config)
    assert res.exit_code == 3
    assert "unsigned" in _flat(res.output)
    _sign(protocol, keys["board"])
    # Edited after signing (budget raised): the signature signs another hash.
    signed = protocol.read_text()
    protocol.write_text(signed.replace("total_epsilon = 1.0", "total_epsilon = 3.0"))
    res = _verify(protocol, config)
    assert res.exit_code == 3
    assert "changed after signing" in _flat(res.output)
    # The attack of the finding: edit, then re-sign with the editor's own key.
    shutil.copy(protocol, tmp_path / "edited.toml")
    (tmp_path / "protocol.toml.sig").unlink()
    _sign(protocol, keys["editor"])
    res = _verify(protocol, config)
    assert res.exit_code == 3
    assert "signed by 0 trusted governance key(s)" in _flat(res.output)
    # A tampered signature.
    protocol.write_text(signed)
    (tmp_path / "protocol.toml.sig").unlink()
    _sign(protocol, keys["board"])
    sig = tmp_path / "protocol.toml.sig"
    doc = json.loads(sig.read_text())
    flipped = "AAAA" if doc["signature"][-8:-4] != "AAAA" else "BBBB"
    doc["signature"] = doc["signature"][:-8] + flipped + doc["signature"][-4:]
    sig.write_text(json.dumps(doc))
    res = _verify(protocol, config)
    assert res.exit_code == 3
    assert "does not verify" in _flat(res.output)
    # A site the protocol does not list.
    other = tmp_path / "other"
    other.mkdir()
    cfg = (tmp_path / "site-1.toml").read_text().replace('id = "site-1"', 'id = "site-2x"')
    (other / "c.toml").write_text(cfg)
    (tmp_path / "protocol.toml.sig").unlink()
    _sign(protocol, keys["board"])
    res = _verify(protocol, other / "c.toml")
    assert res.exit_code == 3
    assert "not a site of this protocol" in _flat(res.output)


def test_threshold_counts_distinct_trusted_signers(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "a", "b", "c", "outsider")
    protocol = _protocol(tmp_path)
    config = _init(tmp_path, "a", "b", "c", threshold=2)
    _sign(protocol, keys["a"])
    _sign(protocol, keys["outsider"])  # counts for nothing
    res = _verify(protocol, config)
    assert res.exit_code == 3
    assert "signed by 1 trusted governance key(s), the site requires 2" in (_flat(res.output))
    _sign(protocol, keys["a"])  # the same signer again is still one
    assert _verify(protocol, config).exit_code == 3
    _sign(protocol, keys["c"])
    res = _verify(protocol, config)
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "protocol.toml.sig").read_text())) == 3  # a, outsider, c
    accepted = verify_for_site(protocol, load_site_config(config))
    assert len(accepted.signers) == 2


def test_version_pin_and_policy(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "board")
    config = _init(tmp_path, "board")
    for changes, needle in [
        ({"version": '"0.0.1"'}, "approved for securefed 0.0.1"),
        ({"version": "none"}, "requires a version pin"),
        ({"total_epsilon": "3.0", "dp_eps": "2.0"}, "DP stage(s) training 2: effective epsilon 2"),
        ({"aggregation": "fedavg", "min_sites": "3"}, "the policy requires 'secagg+'"),
        ({"min_sites": "2"}, "below the policy's 3"),
        ({"dp": "false"}, "requires DP training"),
    ]:
        protocol = _protocol(tmp_path, **changes)
        sig = tmp_path / "protocol.toml.sig"
        sig.unlink(missing_ok=True)
        _sign(protocol, keys["board"])
        res = _verify(protocol, config)
        assert res.exit_code == 3 and needle in _flat(res.output), (changes, res.output)
    # The recipient key and plain releases, through the library.
    loaded = load_protocol(_protocol(tmp_path))
    strict = load_site_config(config)
    assert policy_violations(loaded, strict.policy) == []
    unknown = strict.policy.model_copy(update={"allowed_recipient_keys": (),
                                               "forbidden_release_modes": ("plain",)})  # fmt: skip
    problems = policy_violations(loaded, unknown)
    assert any("not among the policy's allowed keys" in p for p in problems)
    assert any("release.mode 'plain' is forbidden" in p for p in problems)


def test_unsigned_simulation_only_when_the_policy_allows(tmp_path: Path) -> None:
    _keys(tmp_path, "board")
    protocol = _protocol(tmp_path)
    config = _init(tmp_path, "board", policy={"allow_unsigned_simulation": "true"})
    res = _verify(protocol, config)
    assert res.exit_code == 0
    assert "unsigned simulation" in _flat(res.output)
    strict = load_site_config(config)
    strict = strict.model_copy(
        update={"policy": strict.policy.model_copy(update={"allow_unsigned_simulation": False})}
    )
    with pytest.raises(SiteTrustError, match="unsigned"):
        verify_for_site(protocol, strict)


def test_bad_site_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\n[site]\nid = "site-1"\n[trust]\ngovernance_keys = []\n')
    res = _verify(_protocol(tmp_path), bad)
    assert res.exit_code == 2
    assert "trust.governance_keys" in _flat(res.output)
    bad.write_text('schema_version = 1\n[site]\nid = "s"\n[trust]\ngovernance_keys = ["x"]\n'
                   "[policy]\nmax_total_epsilon = \"8\"\n")  # fmt: skip
    res = _verify(_protocol(tmp_path), bad)
    assert res.exit_code == 2
    assert "policy.max_total_epsilon" in _flat(res.output)


def test_signature_document_is_public_and_signs_the_hash_only(tmp_path: Path) -> None:
    board = generate_keys("governance", "board")
    doc = sign_protocol_hash(load_protocol(_protocol(tmp_path)).sha256, board)
    assert set(doc) == {"format", "version", "protocol", "signer", "signer_key",
                        "signer_fingerprint", "signature"}  # fmt: skip


def test_a_protocol_that_would_reset_the_budget_is_refused(tmp_path: Path) -> None:
    """The site spent under protocol X (its ledger, `site.ledger_dir`): protocol Y is accepted
    only as an amendment naming X (governance.supersedes), so the spend carries over."""
    import dp_accounting

    from securefed.privacy.ledger import Ledger, budget_for

    keys = _keys(tmp_path, "board")
    old = load_protocol(_protocol(tmp_path))
    state = tmp_path / "state"
    with Ledger.for_protocol(state, old, "site-1").charge(
        "training", "t1", dp_accounting.GaussianDpEvent(20.0)
    ):
        pass
    config = _init(tmp_path, "board", policy={})
    text = config.read_text().replace("# ledger_dir = ...", f'ledger_dir = "{state}"')
    config.write_text(text)
    fresh = _protocol(tmp_path, min_sites="4")
    _sign(fresh, keys["board"])
    res = _verify(fresh, config)
    assert res.exit_code == 3
    assert "would start the budget afresh" in _flat(res.output)
    amendment = fresh.read_text().replace(
        "[governance]\n", f'[governance]\nsupersedes = "{old.sha256}"\n'
    )
    fresh.write_text(amendment)
    (tmp_path / "protocol.toml.sig").unlink()
    _sign(fresh, keys["board"])
    res = _verify(fresh, config)
    assert res.exit_code == 0, res.output
    amended = load_protocol(fresh)
    ledger = Ledger.for_protocol(state, amended, "site-1")
    assert ledger.spent() > 0
    assert budget_for(amended).total_epsilon == 1.0


def test_the_policy_bounds_each_stages_effective_epsilon_not_the_declared_total(
    tmp_path: Path,
) -> None:
    """Issue 28, item 11: a site with max_total_epsilon = 8 (plain not forbidden) accepted the
    plain demo protocol because it declares 8, though its feature release and its training are
    not DP (epsilon inf). The policy now bounds every stage's effective epsilon
    (securefed.protocol.egress.stage_epsilons) and names the stage that breaks it; stages
    without DP pass only when the policy allows them explicitly (allow_plain_stages)."""
    from securefed.protocol.egress import stage_epsilons
    from securefed.trust import SitePolicy, epsilon_violations

    root = Path(__file__).resolve().parents[2] / "protocols"
    demo = load_protocol(root / "demo.toml")
    assert demo.protocol.privacy.total_epsilon == 8.0
    lax = {"forbidden_release_modes": (), "require_dp_training": False,
           "required_aggregation": "any", "min_sites_per_aggregate": 1,
           "require_version_pin": False}  # fmt: skip
    problems = policy_violations(demo, SitePolicy(max_total_epsilon=8.0, **lax))
    assert any(p.startswith("stage features: effective epsilon inf") for p in problems)
    assert any(p.startswith("stage training: effective epsilon inf") and "model weights" in p
               for p in problems)  # fmt: skip
    assert all("allow_plain_stages" in p for p in problems)
    # Allowed explicitly, or by an unbounded policy: accepted.
    allowed = SitePolicy(max_total_epsilon=8.0, allow_plain_stages=True, **lax)
    assert epsilon_violations(demo.protocol, allowed) == []
    assert epsilon_violations(demo.protocol, SitePolicy(max_total_epsilon=float("inf"))) == []
    # DP features (local-dp, epsilon 4) but training without DP: the training stage breaks it.
    local = load_protocol(root / "demo-local-dp.toml").protocol
    by_stage = {s.stage: s for s in stage_epsilons(local)}
    assert by_stage["features"].epsilon == 4.0
    assert by_stage["training"].epsilon == float("inf")
    problems = epsilon_violations(local, SitePolicy(max_total_epsilon=8.0, **lax))
    assert len(problems) == 1
    assert problems[0].startswith("stage training: effective epsilon inf")
    # With stages without DP allowed, the DP stages still count: 4 > 3.
    problems = epsilon_violations(local, SitePolicy(max_total_epsilon=3.0,
                                                    allow_plain_stages=True, **lax))  # fmt: skip
    assert problems == ["DP stage(s) features 4: effective epsilon 4 exceeds the policy's "
                        "max_total_epsilon 3"]  # fmt: skip
    # Through `site verify`: exit 3 naming the stage.
    keys = _keys(tmp_path, "board")
    config = _init(tmp_path, "board", policy={"allow_plain_stages": "false"})
    protocol = _protocol(tmp_path)  # plain features, DP-SGD 1 (total 1): features break it
    _sign(protocol, keys["board"])
    res = _verify(protocol, config)
    assert res.exit_code == 3
    assert "stage features: effective epsilon inf" in _flat(res.output)


def test_the_demo_sites_accept_every_shipped_protocol_with_plain_stages_allowed_explicitly(
    tmp_path: Path,
) -> None:
    """`securefed demo` and the study runner play the board: each simulated site gets the policy
    of securefed.study.governance.board_policy. After issue 28 (item 11) that policy must still
    accept every shipped protocol, through an explicit allow_plain_stages where a stage is not
    DP (plain features, training without DP, unpaced replies), never through the declared
    total: without it the plain demo is refused, naming both stages."""
    from securefed.protocol.shipped import shipped_protocols
    from securefed.study.governance import board_policy
    from securefed.trust import SiteConfig, SiteIdentity, TrustSpec, write_site_config

    key = SERVER.public.encryption_fingerprint
    for name, path in shipped_protocols().items():
        loaded = load_protocol(path)
        config = SiteConfig(site=SiteIdentity(id="site-1"),
                            trust=TrustSpec(governance_keys=("sha256:" + "0" * 64,)),
                            policy=board_policy(loaded, key))  # fmt: skip
        written = load_site_config(write_site_config(config, tmp_path / f"{name}.toml"))
        assert written == config, name
        assert policy_violations(loaded, written.policy) == [], name
    demo = load_protocol(shipped_protocols()["demo"])
    policy = board_policy(demo, key)
    assert policy.allow_plain_stages
    assert policy.max_total_epsilon == 8.0
    refused = policy_violations(demo, policy.model_copy(update={"allow_plain_stages": False}))
    assert [p.split(":")[0] for p in refused] == ["stage features", "stage training"]


def test_the_ledger_folder_is_the_one_site_toml_pins(tmp_path: Path) -> None:
    """Hostile-coordinator review, item 7: `features release --state DIR` ignored SITE.toml's
    ledger_dir, so an amended protocol released at a fresh folder got a fresh budget (exit 0,
    epsilon 4 again). The pinned folder is now the only one a release may charge."""
    from securefed.errors import ConfigError
    from securefed.trust import SiteConfig, SiteIdentity, TrustSpec, site_state_folder

    trust = TrustSpec(governance_keys=("sha256:" + "a" * 64,))
    pinned = SiteConfig(site=SiteIdentity(id="site-1", ledger_dir=str(tmp_path / "ledger")),
                        trust=trust)  # fmt: skip
    assert site_state_folder(pinned, None) == tmp_path / "ledger"
    assert site_state_folder(pinned, tmp_path / "ledger" / ".") == tmp_path / "ledger"
    with pytest.raises(SiteTrustError, match="pins its ledger"):
        site_state_folder(pinned, tmp_path / "fresh")
    free = SiteConfig(site=SiteIdentity(id="site-1"), trust=trust)
    assert site_state_folder(free, tmp_path / "s") == tmp_path / "s"
    with pytest.raises(ConfigError, match="--state"):
        site_state_folder(free, None)
