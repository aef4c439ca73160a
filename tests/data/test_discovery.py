"""Case discovery: FeTS2022 and BraTS names, .nii and .nii.gz, missing/duplicate modalities."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.data import make_case

from securefed.data import MODALITIES, discover_cases
from securefed.errors import NoCasesError


def test_fets_and_brats_names_in_channel_order(tmp_path: Path) -> None:
    make_case(tmp_path, "FeTS2022_00002")
    make_case(tmp_path, "BraTS2021_00000", suffix=".nii")
    make_case(tmp_path, "FeTS2022_00001", seg=False)
    (tmp_path / "notes").mkdir()  # not a case: ignored
    (tmp_path / "partitioning_1.csv").write_text("Partition_ID,Subject_ID\n")
    found = discover_cases(tmp_path)
    assert list(found.cases) == ["BraTS2021_00000", "FeTS2022_00001", "FeTS2022_00002"]
    assert found.problems == ()
    case = found.cases["BraTS2021_00000"]
    assert tuple(case.images) == MODALITIES
    assert case.images["t1ce"].name == "BraTS2021_00000_t1ce.nii"
    assert case.seg is not None
    assert case.seg.name == "BraTS2021_00000_seg.nii"
    assert found.cases["FeTS2022_00001"].seg is None


def test_missing_modality_is_reported_by_case_and_file(tmp_path: Path) -> None:
    make_case(tmp_path, "FeTS2022_00001")
    make_case(tmp_path, "FeTS2022_00002")
    (tmp_path / "FeTS2022_00002" / "FeTS2022_00002_t1ce.nii.gz").unlink()
    found = discover_cases(tmp_path)
    assert list(found.cases) == ["FeTS2022_00001"]
    (problem,) = found.problems
    assert problem.subject_id == "FeTS2022_00002"
    assert problem.file == "FeTS2022_00002_t1ce.nii.gz"
    assert "missing modality t1ce" in problem.problem


def test_duplicate_modality_is_reported(tmp_path: Path) -> None:
    make_case(tmp_path, "FeTS2022_00001")
    make_case(tmp_path, "FeTS2022_00001", suffix=".nii", modalities=("t2",), seg=False)
    found = discover_cases(tmp_path)
    assert found.cases == {}
    assert "several files for 't2'" in found.problems[0].problem


def test_empty_case_folder_is_a_problem_not_silence(tmp_path: Path) -> None:
    make_case(tmp_path, "FeTS2022_00001")
    (tmp_path / "FeTS2022_00009").mkdir()
    found = discover_cases(tmp_path)
    assert [p.subject_id for p in found.problems] == ["FeTS2022_00009"]


def test_no_cases_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NoCasesError, match="no case folders"):
        discover_cases(tmp_path)
    with pytest.raises(NoCasesError, match="not a folder"):
        discover_cases(tmp_path / "missing")


def test_nested_root_gets_a_hint(tmp_path: Path) -> None:
    make_case(tmp_path / "MICCAI_FeTS2022_TrainingData", "FeTS2022_00001")
    with pytest.raises(NoCasesError, match="MICCAI_FeTS2022_TrainingData"):
        discover_cases(tmp_path)
