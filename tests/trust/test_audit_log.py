"""Audit logs (governance issue, part 4): hash-chained, append-only, heads signed at stage ends;
`securefed audit verify` names the first edited, removed, reordered or truncated entry, a forged
head, and spends that do not match the ledger or exceed the protocol."""

from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import pytest
from typer.testing import CliRunner

from securefed.cli import app
from securefed.crypto import generate_keys, write_keys
from securefed.errors import AuditLogError, InternalError
from securefed.privacy.ledger import BudgetSpec, Ledger, read_ledger
from securefed.trust.audit_log import AUDIT_FILE, AuditLog, verify_audit_log

PROTO = "sha256:" + "ab" * 32
BUDGET = BudgetSpec(4.0, 1e-5, "rdp", "replace-one", {})


def _flat(text: str) -> str:
    return " ".join(text.split())


def _site_log(tmp_path: Path):  # noqa: ANN202
    keys = generate_keys("site", "site-1")
    log = AuditLog(tmp_path, "site-1", PROTO)
    log.record("protocol-accepted", signers=1, unsigned=False)
    ledger = Ledger(tmp_path, site_id="site-1", protocol_hash=PROTO, budget=BUDGET)
    for i in range(2):
        with ledger.charge("features", f"features-{i}", dp_accounting.GaussianDpEvent(3.0)):
            pass
    log.record("envelope-sealed", stage="features", recipient="server", release_id="features-1",
               resent=False)  # fmt: skip
    log.sign_head(keys)
    log.record("training-round", phase="global", round=1, aggregation="secagg+", dp_sgd=False)
    log.sign_head(keys)
    return keys, ledger


def _lines(tmp_path: Path) -> list[str]:
    return (tmp_path / AUDIT_FILE).read_text().splitlines()


def _write(tmp_path: Path, lines: list[str]) -> None:
    (tmp_path / AUDIT_FILE).write_text("\n".join(lines) + "\n")


def test_a_clean_log_verifies_with_its_ledger(tmp_path: Path) -> None:
    keys, ledger = _site_log(tmp_path)
    state = read_ledger(ledger.path)
    summary = verify_audit_log(
        tmp_path, protocol_hash=PROTO, total_epsilon=4.0, ledger_spent=state.spent(),
        ledger_releases=set(state.charges), signer=keys.public.signing_fingerprint,
    )  # fmt: skip
    assert summary.heads == 2
    assert summary.events["budget-spend"] == 2
    assert summary.last_spend == pytest.approx(state.spent())
    text = (tmp_path / AUDIT_FILE).read_text()
    assert str(tmp_path) not in text  # no paths


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("edit", "entry 3: its hash does not match its content"),
        ("remove", "entry 3: sequence number 3, expected 2"),
        ("reorder", "entry 3: sequence number 3, expected 2"),
        ("truncate", "without a signed head"),
        ("forge", "the head's signature does not verify"),
    ],
)
def test_each_tamper_names_the_entry(tmp_path: Path, tamper: str, message: str) -> None:
    _site_log(tmp_path)
    lines = _lines(tmp_path)
    if tamper == "edit":
        entry = json.loads(lines[2])
        entry["details"]["epsilon_spent"] = 0.0  # hide a spend
        lines[2] = json.dumps(entry)
    elif tamper == "remove":
        del lines[2]
    elif tamper == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    elif tamper == "truncate":
        lines = lines[:-1]
    else:  # a forged head: its signature altered (and the entry's hash recomputed)
        entry = json.loads(lines[-1])
        sig = entry["details"]["signature"]
        entry["details"]["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
        from securefed.trust.audit_log import _hash

        entry["hash"] = _hash(entry)
        lines[-1] = json.dumps(entry)
    _write(tmp_path, lines)
    with pytest.raises(AuditLogError, match=message):
        verify_audit_log(tmp_path)


def test_spends_are_checked_against_the_ledger_and_the_protocol(tmp_path: Path) -> None:
    keys, ledger = _site_log(tmp_path)
    state = read_ledger(ledger.path)
    with pytest.raises(AuditLogError, match="not in the site's ledger"):
        verify_audit_log(tmp_path, ledger_releases={"features-0"})
    with pytest.raises(AuditLogError, match="exceeds the protocol's total"):
        verify_audit_log(tmp_path, total_epsilon=0.1)
    with pytest.raises(AuditLogError, match="the ledger was rolled back"):
        verify_audit_log(tmp_path, ledger_spent=state.spent() / 2)
    with pytest.raises(AuditLogError, match="spends missing from the log"):
        verify_audit_log(tmp_path, ledger_spent=state.spent() * 2)
    other = generate_keys("site", "site-1")
    with pytest.raises(AuditLogError, match="not the party's key"):
        verify_audit_log(tmp_path, signer=other.public.signing_fingerprint)
    assert keys.party_id == "site-1"


def test_only_plain_values_are_written(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "site-1", PROTO)
    for bad in ({"file": "/data/FeTS2022_00001/flair.nii.gz"}, {"values": [1.0, 2.0]},
                {"release_id": "../../etc"}):  # fmt: skip
        with pytest.raises(InternalError, match="plain value"):
            log.record("features-released", **bad)
    with pytest.raises(InternalError, match="unknown event"):
        log.record("anything")


def test_cli_verify_and_sign_exit_codes(tmp_path: Path) -> None:
    keys, _ = _site_log(tmp_path)
    paths = write_keys(keys, tmp_path / "keys")
    ok = CliRunner().invoke(app, ["audit", "verify", str(tmp_path), "--ledger", str(tmp_path),
                                  "--key", str(paths.public)])  # fmt: skip
    assert ok.exit_code == 0 and "OK site-1" in _flat(ok.output), ok.output
    AuditLog(tmp_path, "site-1", PROTO).record("training-round", phase="global", round=2,
                                               aggregation="secagg+", dp_sgd=False)  # fmt: skip
    open_stage = CliRunner().invoke(app, ["audit", "verify", str(tmp_path), "--key",
                                          str(paths.public)])  # fmt: skip
    assert open_stage.exit_code == 3
    assert "without a signed head" in _flat(open_stage.output)
    proto = tmp_path / "p.toml"
    proto.write_text('schema_version = 1\n[study]\nname = "t"\nmode = "simulation"\n'
                     "[privacy]\ntotal_epsilon = 4.0\n")  # fmt: skip
    from securefed.protocol import load_protocol

    log = AuditLog(tmp_path / "other", "site-1", load_protocol(proto).sha256)
    log.record("protocol-accepted", signers=1, unsigned=False)
    signed = CliRunner().invoke(app, ["audit", "sign", str(tmp_path / "other"), "--key",
                                      str(paths.private), "--protocol", str(proto)])  # fmt: skip
    assert signed.exit_code == 0, signed.output
    args = ["audit", "verify", str(tmp_path / "other"), "--protocol", str(proto), "--key",
            str(paths.public)]  # fmt: skip
    verified = CliRunner().invoke(app, args)
    assert verified.exit_code == 0, verified.output


def _pinning_protocol(tmp: Path, name: str, site_1: str, total: float = 4.0) -> Path:
    """A protocol whose [[sites]] pins site-1's signing key (fingerprint ``site_1``)."""
    server = generate_keys("server", "server")
    sites = "".join(f'[[sites]]\nid = "site-{p}"\npartition_id = {p}\n' for p in (2, 3))
    path = tmp / name
    path.write_text(
        f'schema_version = 1\n[study]\nname = "t"\nmode = "simulation"\n[privacy]\n'
        f'total_epsilon = {total}\n[server]\nid = "server"\n'
        f'signing_key = "{server.public.signing_fingerprint}"\n'
        f'[[sites]]\nid = "site-1"\npartition_id = 1\nsigning_key = "{site_1}"\n{sites}'
    )
    return path


def _replay(src: Path, dst: Path, keys, protocol_hash: str) -> None:  # noqa: ANN001
    """Re-chain the events of ``src``'s log into ``dst``, heads signed with ``keys``."""
    log = AuditLog(dst, keys.party_id, protocol_hash)
    for raw in (src / AUDIT_FILE).read_text().splitlines():
        entry = json.loads(raw)
        if entry["event"] == "head":
            log.sign_head(keys)
        else:
            log.record(entry["event"], **entry["details"])


def test_verify_checks_heads_against_the_pinned_key_and_refuses_without_one(
    tmp_path: Path,
) -> None:
    """Issue 28, item 8: a log re-chained and re-signed by a fresh key that claims the same
    site id verified when no key was given. `audit verify` now takes the signing key the
    protocol pins for the log's party (or --key), refuses without either (exit 2, saying what
    to pass), and the forgery fails (exit 3)."""
    from securefed.protocol import load_protocol

    honest = generate_keys("site", "site-1")
    paths = write_keys(honest, tmp_path / "keys")
    proto = _pinning_protocol(tmp_path, "p.toml", honest.public.signing_fingerprint)
    sha = load_protocol(proto).sha256
    _site_log(tmp_path / "seed")  # an honest site's events: releases, spends, rounds
    _replay(tmp_path / "seed", tmp_path / "log", honest, sha)
    forger = generate_keys("site", "site-1")  # a fresh key, the same site id
    _replay(tmp_path / "log", tmp_path / "forged", forger, sha)
    run = CliRunner().invoke

    def verify(folder: str, *extra: str):  # noqa: ANN202
        res = run(app, ["audit", "verify", str(tmp_path / folder), *extra])
        return res.exit_code, _flat(res.output)

    code, out = verify("forged")
    assert code == 2 and "--key site-1.pub.json" in out and "--protocol" in out, out
    code, out = verify("forged", "--protocol", str(proto))
    assert code == 3 and f"not the party's key {honest.public.signing_fingerprint}" in out, out
    code, out = verify("forged", "--key", str(paths.public))
    assert code == 3 and "not the party's key" in out, out
    assert verify("log", "--protocol", str(proto))[0] == 0
    assert verify("log", "--key", str(paths.public))[0] == 0
    # --key must agree with the protocol's pin; a key of another party is refused.
    forged_keys = write_keys(forger, tmp_path / "forger")
    code, out = verify("log", "--protocol", str(proto), "--key", str(forged_keys.public))
    assert code == 3 and "not the signing key the protocol pins for site-1" in out, out
    other = write_keys(generate_keys("site", "site-2"), tmp_path / "keys")
    code, out = verify("log", "--key", str(other.public))
    assert code == 3 and "the log is site-1's" in out, out
    # A protocol that pins no key for the party: --key is still needed.
    unpinned = tmp_path / "unpinned.toml"
    unpinned.write_text('schema_version = 1\n[study]\nname = "t"\nmode = "simulation"\n'
                        "[privacy]\ntotal_epsilon = 4.0\n")  # fmt: skip
    code, out = verify("forged", "--protocol", str(unpinned))
    assert code == 2 and "pins no signing key for site-1" in out, out


def test_sign_refuses_another_protocol_and_leaves_the_log_untouched(tmp_path: Path) -> None:
    """Issue 28, item 8: `audit sign --protocol OTHER` appended a head under the wrong protocol,
    after which the log failed verification against either protocol for good. It now refuses
    (exit 3) and writes nothing; so does a key of another party or one the protocol does not
    pin."""
    from securefed.protocol import load_protocol

    keys = generate_keys("site", "site-1")
    paths = write_keys(keys, tmp_path / "keys")
    fp = keys.public.signing_fingerprint
    proto = _pinning_protocol(tmp_path, "p.toml", fp)
    other = _pinning_protocol(tmp_path, "other.toml", fp, total=2.0)
    log = AuditLog(tmp_path / "log", "site-1", load_protocol(proto).sha256)
    log.record("protocol-accepted", signers=1, unsigned=False)
    before = log.path.read_bytes()
    run = CliRunner().invoke
    res = run(app, ["audit", "sign", str(tmp_path / "log"), "--key", str(paths.private),
                    "--protocol", str(other)])  # fmt: skip
    assert res.exit_code == 3 and "refusing to sign its head under another protocol" in (
        _flat(res.output)
    ), res.output
    assert log.path.read_bytes() == before
    site2 = write_keys(generate_keys("site", "site-2"), tmp_path / "keys")
    res = run(app, ["audit", "sign", str(tmp_path / "log"), "--key", str(site2.private),
                    "--protocol", str(proto)])  # fmt: skip
    assert res.exit_code == 3 and "holds entries of site-1" in _flat(res.output), res.output
    stranger = write_keys(generate_keys("site", "site-1"), tmp_path / "stranger")
    res = run(app, ["audit", "sign", str(tmp_path / "log"), "--key", str(stranger.private),
                    "--protocol", str(proto)])  # fmt: skip
    assert res.exit_code == 3
    assert "not the signing key the protocol pins" in _flat(res.output)
    assert log.path.read_bytes() == before
    # The right protocol and key: signed, and the log verifies against its pinned key.
    res = run(app, ["audit", "sign", str(tmp_path / "log"), "--key", str(paths.private),
                    "--protocol", str(proto)])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run(app, ["audit", "verify", str(tmp_path / "log"), "--protocol", str(proto)])
    assert res.exit_code == 0, res.output
