"""The site ledger: budget refusal before noise, hash chain, crash consistency under kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dp_accounting
import pytest
from support.ledger import PROTO, SIGMA, event, ledger

from securefed.errors import BudgetExceededError, LedgerCorruptError, LedgerError
from securefed.privacy.ledger import LEDGER_FILE, BudgetSpec, Ledger, read_ledger


def test_charge_commit_and_refusal_before_the_body(tmp_path):
    led = ledger(tmp_path)
    with led.charge("features", "r1", event(), (1.0, 1e-5)) as h:
        assert h.spent_epsilon == pytest.approx(1.0)
    assert led.spent() == pytest.approx(1.0)
    ran = []
    with (
        pytest.raises(BudgetExceededError, match="refused before any noise"),
        led.charge("clustering", "r2", dp_accounting.GaussianDpEvent(50.0)),
    ):
        ran.append(True)
    assert ran == []
    state = led.verify()
    assert [e["kind"] for e in state.entries] == ["open", "intent", "commit"]


def test_stage_allocation_is_enforced(tmp_path):
    budget = BudgetSpec(10.0, 1e-5, "rdp", "replace-one", {"features": (1.0, 1e-5)})
    led = Ledger(tmp_path, site_id="s", protocol_hash=PROTO, budget=budget)
    with led.charge("features", "a", event(), (1.0, 1e-5)):
        pass
    with (
        pytest.raises(BudgetExceededError, match="stage 'features'"),
        led.charge("features", "b", dp_accounting.GaussianDpEvent(30.0)),
    ):
        pass
    with led.charge("training", "c", dp_accounting.GaussianDpEvent(30.0)):
        pass


def test_claims_are_verified(tmp_path):
    with (
        pytest.raises(LedgerError, match="claimed budget"),
        ledger(tmp_path).charge("features", "r", event(), (0.5, 1e-5)),
    ):
        pass


def test_retry_and_committed_ids(tmp_path):
    led = ledger(tmp_path)
    with pytest.raises(RuntimeError), led.charge("features", "r1", event(), (1.0, 1e-5)):
        raise RuntimeError("crash while writing the release")
    assert led.spent() == pytest.approx(1.0)  # the intent counts
    with led.charge("features", "r1", event(), (1.0, 1e-5)) as h:
        assert h.reused
    assert led.spent() == pytest.approx(1.0)
    with (
        pytest.raises(LedgerError, match="already committed"),
        led.charge("features", "r1", event(), (1.0, 1e-5)),
    ):
        pass


def test_tampering_names_the_line(tmp_path):
    led = ledger(tmp_path)
    budget = BudgetSpec(100.0, 1e-5, "rdp", "replace-one")
    led = Ledger(tmp_path, site_id="site-1", protocol_hash=PROTO, budget=budget)
    for rid in ("a", "b"):
        with led.charge("features", rid, event(), (1.0, 1e-5)):
            pass
    path = tmp_path / LEDGER_FILE
    good = path.read_text().splitlines(keepends=True)
    entry = json.loads(good[1])
    entry["event"]["noise_multiplier"] = 100.0  # pretend more noise
    path.write_text(good[0] + json.dumps(entry) + "\n" + "".join(good[2:]))
    with pytest.raises(LedgerCorruptError, match="line 2: hash does not match"):
        read_ledger(path)
    path.write_text(good[0] + "".join(good[2:]))  # drop an entry
    with pytest.raises(LedgerCorruptError, match="line 2: hash chain broken"):
        led.verify()
    path.write_text("".join(good[:3]) + "{not json\n" + "".join(good[3:]))
    with pytest.raises(LedgerCorruptError, match="line 4: not valid JSON"):
        led.verify()
    path.write_text("".join(good))
    assert len(led.verify().entries) == 5
    other = Ledger(tmp_path, site_id="site-2", protocol_hash=PROTO, budget=budget)
    with pytest.raises(LedgerError, match="belongs to site"):
        other.spent()


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import dp_accounting
    from securefed.privacy import ledger as L
    from support.ledger import ledger, event

    point = sys.argv[2]
    real_append = L.Ledger._append

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def append(self, fh, state, body):
        if body["kind"] == point.split("-")[-1]:
            if point.startswith("before"):
                die()
            if point.startswith("torn"):
                fh.write(b'{"v":1,"seq":')
                fh.flush()
                os.fsync(fh.fileno())
                die()
        real_append(self, fh, state, body)

    L.Ledger._append = append
    with ledger(sys.argv[1]).charge("features", "r1", event(), (1.0, 1e-5)):
        if point == "in-body":
            die()
    die()  # after the commit
    """
)

# point -> (charges recorded after the crash, committed)
POINTS = {
    "before-intent": (0, 0),
    "torn-intent": (0, 0),
    "in-body": (1, 0),
    "before-commit": (1, 0),
    "torn-commit": (1, 0),
    "after-commit": (1, 1),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_9_never_loses_nor_double_counts_a_spend(tmp_path, point):
    import os

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": tests}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), point],
        env=env,
        timeout=120,
        capture_output=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    state = read_ledger(tmp_path / LEDGER_FILE)  # a torn tail is not corruption
    charges, committed = POINTS[point]
    assert len(state.charges) == charges
    assert len(state.committed) == committed
    assert state.spent() == pytest.approx(float(charges))
    led = ledger(tmp_path)
    if committed:
        with (
            pytest.raises(LedgerError, match="already committed"),
            led.charge("features", "r1", event(), (1.0, 1e-5)),
        ):
            pass
    else:
        with led.charge("features", "r1", event(), (1.0, 1e-5)) as h:  # the retry
            assert h.reused == bool(charges)
    final = led.verify()
    assert not final.torn_tail
    assert len(final.charges) == 1
    assert final.committed == {"r1"}
    assert final.spent() == pytest.approx(1.0)
    with pytest.raises(BudgetExceededError), led.charge("features", "r2", event(), (1.0, 1e-5)):
        pass


def test_an_amendment_carries_the_spend_over_and_never_resets_it(tmp_path):
    """Governance issue: an amended protocol names the one it supersedes; the site's ledger then
    continues under it (an 'amend' entry), every earlier charge counts against the new budget,
    and a protocol that does not name it cannot take the ledger over (no reset)."""
    from support.ledger import BUDGET

    half = dp_accounting.GaussianDpEvent(SIGMA * 1.6)
    led = ledger(tmp_path)
    with led.charge("features", "r1", half):
        pass
    spent = led.spent()
    amended = "sha256:" + "cd" * 32
    bigger = BudgetSpec(2.0, 1e-5, "rdp", "replace-one", {"features": (2.0, 1e-5)})
    new = Ledger(tmp_path, site_id="site-1", protocol_hash=amended, budget=bigger,
                 supersedes=PROTO)  # fmt: skip
    assert new.spent() == pytest.approx(spent)  # pending amendment: the spend is still there
    with new.charge("features", "r2", half) as handle:
        assert handle.spent_epsilon > spent  # composed with the earlier release
    state = new.verify()
    assert [e["kind"] for e in state.entries] == [
        "open", "intent", "commit", "amend", "intent", "commit"]  # fmt: skip
    assert state.protocol == amended
    assert state.budget == bigger
    # Another protocol that does not name the ledger's cannot use it (a fresh budget is refused).
    other = Ledger(tmp_path, site_id="site-1", protocol_hash="sha256:" + "ef" * 32,
                   budget=BUDGET, supersedes=PROTO)  # fmt: skip
    with pytest.raises(LedgerError, match="belongs to site"):
        other.verify()
    # An amend entry naming another protocol is a tamper.
    lines = (tmp_path / LEDGER_FILE).read_text().splitlines()
    entry = json.loads(lines[3])
    entry["supersedes"] = "sha256:" + "00" * 32
    lines[3] = json.dumps(entry)
    (tmp_path / LEDGER_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(LedgerCorruptError, match="line 4"):
        read_ledger(tmp_path / LEDGER_FILE)


def test_per_stage_spend_and_the_epsilon_curve(tmp_path):
    """One accountant: each stage's charges at the protocol's delta, the composed total, and the
    total after each charge (what the report plots and privacy/epsilon.csv lists)."""
    budget = BudgetSpec(50.0, 1e-5, "rdp", "replace-one", {"training": (40.0, 1e-5)})
    led = Ledger(tmp_path, site_id="s", protocol_hash=PROTO, budget=budget)
    with led.charge("features", "f", event(), (1.0, 1e-5)):
        pass
    for rnd in range(3):
        with led.charge("training", f"t{rnd}", dp_accounting.GaussianDpEvent(4.0)):
            pass
    state = led.verify()
    stages = state.spent_per_stage()
    assert set(stages) == {"features", "training"}
    assert stages["features"] == pytest.approx(1.0)
    from securefed.privacy.accounting import composed_epsilon

    rounds = [c for c in state.charges.values() if c.stage == "training"]
    one = composed_epsilon(rounds[:1], 1e-5, "rdp")
    assert one < stages["training"] < 3 * one  # composed by the accountant, not summed
    curve = read_ledger(tmp_path / LEDGER_FILE).epsilon_curve()
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    assert [r["stage"] for r in curve] == ["features", "training", "training", "training"]
    eps = [r["epsilon"] for r in curve]
    assert eps == sorted(eps)
    assert eps[0] == pytest.approx(1.0)
    assert eps[-1] == pytest.approx(state.spent())
    assert state.spent() <= sum(stages.values()) + 1e-9


def test_ledger_show_prints_each_stage_and_the_total(tmp_path):
    from typer.testing import CliRunner

    from securefed.cli import app

    budget = BudgetSpec(50.0, 1e-5, "rdp", "replace-one", {"training": (40.0, 1e-5)})
    led = Ledger(tmp_path, site_id="s", protocol_hash=PROTO, budget=budget)
    with led.charge("features", "f", event(), (1.0, 1e-5)):
        pass
    with led.charge("training", "t0", dp_accounting.GaussianDpEvent(4.0)):
        pass
    res = CliRunner().invoke(app, ["ledger", "show", str(tmp_path)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "per stage, at delta 1e-05" in text
    assert "features │ 1 │ 1 │ -" in text
    assert "training │ 1 │" in text
    assert "│ 40 │" in text
    assert "total (composed) │ 2 │" in text
    assert "│ 50 │" in text


def test_a_deleted_ledger_does_not_refund_the_budget(tmp_path: Path) -> None:
    """Hostile-coordinator review, item 7: deleting ledger.jsonl refunded the training budget
    unnoticed. The site's audit log records every spend beside the ledger; a ledger that does
    not extend those spends is refused before any charge (and so before any noise)."""
    import dp_accounting

    from securefed.errors import LedgerRollbackError
    from securefed.privacy import Ledger

    loaded = _loaded_for_anchor(tmp_path)
    ledger = Ledger.for_protocol(tmp_path / "site", loaded, "site-1")
    event = dp_accounting.GaussianDpEvent(5.0)
    for rid in ("r1", "r2"):
        with ledger.charge("training", rid, event):
            pass
    backup = (tmp_path / "site" / "ledger.jsonl").read_text()
    (tmp_path / "site" / "ledger.jsonl").unlink()
    with (
        pytest.raises(LedgerRollbackError, match="does not extend"),
        ledger.charge("training", "r3", event),
    ):
        pytest.fail("charged on a deleted ledger")
    (tmp_path / "site" / "ledger.jsonl").write_text(backup.splitlines(keepends=True)[0])
    with (
        pytest.raises(LedgerRollbackError, match="missing"),
        ledger.charge(  # truncated
            "training", "r3", event
        ),
    ):
        pytest.fail("charged on a truncated ledger")
    (tmp_path / "site" / "ledger.jsonl").write_text(backup)  # restored: charging goes on
    with ledger.charge("training", "r3", event):
        pass


def _loaded_for_anchor(tmp_path: Path):  # noqa: ANN202
    from support.dpsgd import PROTOCOL

    from securefed.protocol import load_protocol

    path = tmp_path / "protocol.toml"
    path.write_text(PROTOCOL.format(rounds=2, finetune=1, enabled="true"))
    return load_protocol(path)
