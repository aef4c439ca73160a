"""Writing a synthetic federation: FeTS2022 layout, CSVs, atomicity, determinism, CLI, and the
data layer reading it back."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from securefed.data import load_case, load_federation
from securefed.data.synth import PRESETS, TRUTH_COLUMNS, Institution, Preset, synthesize
from securefed.errors import DataError

TINY = Preset(
    name="tiny",
    description="test preset",
    institutions=(
        Institution(1, 3, (("siemens-3t", 0.5), ("legacy-1.5t", 0.5))),
        Institution(2, 2, (("philips-3t", 1.0),)),
    ),
    spacing_mm=4.0,
)
MODS = ("flair", "t1", "t1ce", "t2", "seg")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "fed"
    result = synthesize(out, preset=TINY, seed=5)
    assert result.n_cases == 5
    assert result.shape == (50, 59, 48)
    return out


def test_layout_and_csvs(tiny_root: Path) -> None:
    subjects = [f"FeTS2022_{i:05d}" for i in range(1, 6)]
    assert sorted(p.name for p in tiny_root.iterdir()) == sorted(
        [*subjects, "partitioning_1.csv", "truth.csv"]
    )
    for s in subjects:
        assert sorted(p.name for p in (tiny_root / s).iterdir()) == sorted(
            f"{s}_{m}.nii.gz" for m in MODS
        )
    part = _rows(tiny_root / "partitioning_1.csv")
    assert list(part[0]) == ["Partition_ID", "Subject_ID"]
    assert [(r["Partition_ID"], r["Subject_ID"]) for r in part] == [
        ("1", subjects[0]), ("1", subjects[1]), ("1", subjects[2]),
        ("2", subjects[3]), ("2", subjects[4]),
    ]  # fmt: skip
    truth = _rows(tiny_root / "truth.csv")
    assert tuple(truth[0]) == TRUTH_COLUMNS
    assert {r["scanner"] for r in truth[:3]} == {"siemens-3t", "legacy-1.5t"}
    for r in truth:
        assert float(r["ncr_ml"]) > 0
        assert float(r["et_ml"]) > 0
        assert float(r["ed_ml"]) > 0


def test_nifti_types_and_shared_geometry(tiny_root: Path) -> None:
    folder = tiny_root / "FeTS2022_00004"
    images = {m: nib.load(folder / f"FeTS2022_00004_{m}.nii.gz") for m in MODS}
    ref = images["flair"]
    for m, img in images.items():
        assert img.shape == ref.shape
        assert np.allclose(img.affine, ref.affine)
        assert img.get_data_dtype() == (np.uint8 if m == "seg" else np.int16)
    assert np.allclose(ref.header.get_zooms(), (4.0, 4.0, 4.0))


def test_reader_loads_it_back(tiny_root: Path) -> None:
    fed = load_federation(tiny_root, check="full")
    assert not fed.problems
    assert len(fed.cases) == 5
    assert fed.partitions == {1: ["FeTS2022_00001", "FeTS2022_00002", "FeTS2022_00003"],
                              2: ["FeTS2022_00004", "FeTS2022_00005"]}  # fmt: skip
    vol = load_case(fed.cases["FeTS2022_00001"])
    assert vol.image.shape == (4, 50, 59, 48)
    assert vol.label is not None
    assert set(np.unique(vol.label)) == {0, 1, 2, 4}
    truth = _rows(tiny_root / "truth.csv")[0]
    voxel_ml = 64 / 1000
    assert float(truth["et_ml"]) == pytest.approx((vol.label == 4).sum() * voxel_ml, abs=1e-3)


@pytest.mark.slow  # two worker processes (13 s on the 2-core VM)
def test_refuses_non_empty_out_and_force_replaces(tmp_path: Path, tiny_root: Path) -> None:
    out = tmp_path / "fed"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        synthesize(out, preset=TINY, seed=5)
    assert (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["fed"]  # no staging folder left behind
    synthesize(out, preset=TINY, seed=5, workers=2, force=True)
    assert not (out / "keep.txt").exists()
    assert _digest(out) == _digest(tiny_root)  # byte-identical whatever the worker count
    assert [p.name for p in tmp_path.iterdir()] == ["fed"]


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: 13 s
def test_interrupted_run_leaves_nothing(tmp_path: Path, workers: int) -> None:
    out = tmp_path / "fed"
    calls: list[str] = []

    def stop(subject: str) -> None:
        calls.append(subject)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(out, preset=TINY, seed=5, workers=workers, on_case=stop)
    assert list(tmp_path.iterdir()) == []


def test_cli_synth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enum import StrEnum

    from securefed.cli import synth as synth_cli
    from securefed.cli.synth import register

    monkeypatch.setitem(PRESETS, "tiny", TINY)
    # --preset is an Enum of PRESETS' names: a test-only preset extends the Enum too
    monkeypatch.setattr(synth_cli, "SynthPreset", StrEnum("SynthPreset", {p: p for p in PRESETS}))
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep `synth` a named subcommand
    runner = CliRunner()
    out = tmp_path / "fed"
    result = runner.invoke(app, ["synth", "--out", str(out), "--preset", "tiny", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert (out / "truth.csv").exists()
    assert "wrote 5 cases" in result.output
    again = runner.invoke(app, ["synth", "--out", str(out), "--preset", "tiny"])
    assert again.exit_code == 2
    assert "not empty" in again.output
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--preset", "nope"])
    assert bad.exit_code == 2
    assert "is not one of" in bad.output
