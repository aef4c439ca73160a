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
    assert summary.heads == 2 and summary.events["budget-spend"] == 2
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
    open_stage = CliRunner().invoke(app, ["audit", "verify", str(tmp_path)])
    assert open_stage.exit_code == 3 and "without a signed head" in _flat(open_stage.output)
    proto = tmp_path / "p.toml"
    proto.write_text('schema_version = 1\n[study]\nname = "t"\nmode = "simulation"\n'
                     "[privacy]\ntotal_epsilon = 4.0\n")  # fmt: skip
    from securefed.protocol import load_protocol

    log = AuditLog(tmp_path / "other", "site-1", load_protocol(proto).sha256)
    log.record("protocol-accepted", signers=1, unsigned=False)
    signed = CliRunner().invoke(app, ["audit", "sign", str(tmp_path / "other"), "--key",
                                      str(paths.private), "--protocol", str(proto)])  # fmt: skip
    assert signed.exit_code == 0, signed.output
    assert CliRunner().invoke(app, ["audit", "verify", str(tmp_path / "other"), "--protocol",
                                    str(proto)]).exit_code == 0  # fmt: skip
