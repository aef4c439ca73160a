"""`securefed data check`: problem table, summary line and exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from support.data import SHAPE, make_federation, rewrite
from typer.testing import CliRunner

from securefed.cli.data import register


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), ["data", "check", *args], terminal_width=200)


def test_clean_root_exits_zero(tmp_path: Path) -> None:
    make_federation(tmp_path, [2, 1])
    res = _run(str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "2 partitions; 3 cases loaded, 0 excluded" in res.output


def test_bad_cases_are_tabled_and_exit_zero(tmp_path: Path) -> None:
    make_federation(tmp_path, [3])
    lab = np.zeros(SHAPE, np.uint8)
    lab[1, 1, 1] = 3
    rewrite(tmp_path / "FeTS2022_00002" / "FeTS2022_00002_seg.nii.gz", lab)
    header = _run(str(tmp_path), "--header-only")
    assert header.exit_code == 0 and "3 cases loaded, 0 excluded" in header.output
    res = _run(str(tmp_path), "--full", "--workers", "2")
    assert res.exit_code == 0, res.output
    assert "FeTS2022_00002_seg.nii.gz" in res.output and "outside" in res.output
    assert "2 cases loaded, 1 excluded: FeTS2022_00002" in res.output


def test_no_usable_case_exits_two(tmp_path: Path) -> None:
    res = _run(str(tmp_path))
    assert res.exit_code == 2
    assert "SF122" in res.output and "nocasefolders" in "".join(res.output.split())
    make_federation(tmp_path, [1])
    flair = tmp_path / "FeTS2022_00001" / "FeTS2022_00001_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:60])
    res = _run(str(tmp_path))
    assert res.exit_code == 2
    assert "0casesloaded,1excluded:FeTS2022_00001" in "".join(res.output.split())


def test_partitioning_option(tmp_path: Path) -> None:
    make_federation(tmp_path, [2])
    assert _run(str(tmp_path), "-p", "partitioning_2").exit_code == 2
    res = _run(str(tmp_path), "--partitioning", "none")
    assert res.exit_code == 0 and "1 partition; 2 cases loaded" in res.output
