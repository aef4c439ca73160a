"""`securefed features bounds` and `securefed ledger show|verify` through typer's CliRunner."""

from __future__ import annotations

import json

import dp_accounting
import typer
from support.privacy import COLUMNS, reference_matrix
from typer.testing import CliRunner

from securefed.cli import ledger as ledger_cli
from securefed.cli import radiomics as features_cli
from securefed.privacy.bounds import read_bounds
from securefed.privacy.ledger import LEDGER_FILE, BudgetSpec, Ledger
from securefed.protocol import file_sha256
from securefed.radiomics.storage import save_table
from securefed.radiomics.table import FeatureTable

runner = CliRunner()


def app() -> typer.Typer:
    a = typer.Typer()
    features_cli.register(a)
    ledger_cli.register(a)
    return a


def test_features_bounds_writes_a_pinnable_file(tmp_path):
    x = reference_matrix(20)
    table = FeatureTable([f"c{i}" for i in range(20)], [1] * 20, ["train"] * 20, COLUMNS, x)
    save_table(table, tmp_path / "feat")
    out = tmp_path / "bounds.json"
    res = runner.invoke(
        app(),
        [
            "features",
            "bounds",
            "--features",
            str(tmp_path / "feat"),
            "--out",
            str(out),
            "--source",
            "synthetic seed 0, NOT study data",
        ],
    )
    assert res.exit_code == 0, res.output
    assert file_sha256(out) in res.output
    bounds = read_bounds(out)
    assert bounds.columns == COLUMNS
    assert "NOT study data" in bounds.source
    assert (bounds.lower <= x.min(0)).all()
    assert (bounds.upper >= x.max(0)).all()


def test_ledger_show_and_verify(tmp_path):
    led = Ledger(
        tmp_path, site_id="site-1", protocol_hash="sha256:" + "0" * 64, budget=BudgetSpec(4.0, 1e-5)
    )
    with led.charge("clustering", "round-0", dp_accounting.GaussianDpEvent(3.0)):
        pass
    res = runner.invoke(app(), ["ledger", "show", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "round-0" in res.output
    assert "of 4" in res.output
    res = runner.invoke(app(), ["ledger", "verify", str(tmp_path)])
    assert res.exit_code == 0
    assert "chain intact" in res.output
    path = tmp_path / LEDGER_FILE
    lines = path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["stage"] = "features"
    path.write_text(lines[0] + json.dumps(entry) + "\n" + "".join(lines[2:]))
    res = runner.invoke(app(), ["ledger", "verify", str(tmp_path)])
    assert res.exit_code == 3
    assert "line 2" in res.output
    res = runner.invoke(app(), ["ledger", "verify", str(tmp_path / "missing")])
    assert res.exit_code == 2
