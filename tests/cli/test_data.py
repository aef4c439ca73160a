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
    assert header.exit_code == 0
    assert "3 cases loaded, 0 excluded" in header.output
    res = _run(str(tmp_path), "--full", "--workers", "2")
    assert res.exit_code == 0, res.output
    assert "FeTS2022_00002_seg.nii.gz" in res.output
    assert "outside" in res.output
    assert "2 cases loaded, 1 excluded: FeTS2022_00002" in res.output


def test_no_usable_case_exits_two(tmp_path: Path) -> None:
    res = _run(str(tmp_path))
    assert res.exit_code == 2
    assert "SF122" in res.output
    assert "nocasefolders" in "".join(res.output.split())
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
    assert res.exit_code == 0
    assert "1 partition; 2 cases loaded" in res.output


def test_values_are_checked_by_default(tmp_path: Path) -> None:
    """Governance issue: `data check` reads every voxel unless told otherwise (label 3 caught)."""
    make_federation(tmp_path, [2])
    lab = np.zeros(SHAPE, np.uint8)
    lab[1, 1, 1] = 3
    rewrite(tmp_path / "FeTS2022_00001" / "FeTS2022_00001_seg.nii.gz", lab)
    res = _run(str(tmp_path))
    assert res.exit_code == 0
    assert "1 case loaded, 1 excluded" in " ".join(res.output.split())


def test_links_out_of_the_root_are_refused_and_names_print_literally(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_federation(root, [2])
    outside = tmp_path / "elsewhere"
    (root / "FeTS2022_00001").rename(outside)
    (root / "FeTS2022_00001").symlink_to(outside)  # a case folder that leaves the root
    flair = root / "FeTS2022_00002" / "FeTS2022_00002_flair.nii.gz"
    flair.rename(tmp_path / "flair.nii.gz")
    flair.symlink_to(tmp_path / "flair.nii.gz")  # one file that leaves the root
    res = _run(str(root), "--partitioning", "none")
    flat = " ".join(res.output.split())
    assert res.exit_code == 2 and "leaves the data root" in flat, res.output
    # A folder name with a terminal escape and rich markup is printed as text, not interpreted.
    evil = "X\x1b[2J[bold]Y"
    case = root / evil
    case.mkdir()
    for m in ("flair", "t1", "t1ce", "t2"):
        (case / f"{evil}_{m}.nii.gz").write_bytes(b"not nifti")
    res = _run(str(root), "--partitioning", "none")
    assert "\x1b" not in res.output
    assert "\\x1b[2J[bold]Y" in res.output


def test_strict_fails_when_any_case_is_excluded(tmp_path: Path) -> None:
    """Without --strict a truncated .nii.gz is excluded and the check passes (exit 0); with it
    the check exits 2, naming the case (the table above names the file)."""
    make_federation(tmp_path, [2, 1])
    assert _run(str(tmp_path), "--strict").exit_code == 0
    t2 = tmp_path / "FeTS2022_00002" / "FeTS2022_00002_t2.nii.gz"
    t2.write_bytes(t2.read_bytes()[: t2.stat().st_size // 2])
    lenient = _run(str(tmp_path))
    assert lenient.exit_code == 0
    assert "2 cases loaded, 1 excluded" in lenient.output
    for level in ("--full", "--header-only"):
        res = _run(str(tmp_path), level, "--strict")
        flat = " ".join(res.output.split())
        assert res.exit_code == 2, flat
        assert "FeTS2022_00002_t2.nii.gz" in flat
        assert "--strict: 1 case(s) excluded: FeTS2022_00002" in flat
