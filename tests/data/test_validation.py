"""Validation: every CaseError names case and file; a broken case is excluded, others still load."""

from __future__ import annotations

import copy
import gzip
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from support.data import SHAPE, affine, make_case, make_federation, rewrite

from securefed.data import check_case, check_cases, discover_cases, load_case, load_federation
from securefed.errors import CaseError, DataError, NoCasesError

S = "FeTS2022_00001"


def _case(tmp_path: Path, **kw):
    make_case(tmp_path, S, **kw)
    return discover_cases(tmp_path).cases[S]


def _file(tmp_path: Path, key: str, suffix: str = ".nii.gz") -> Path:
    return tmp_path / S / f"{S}_{key}{suffix}"


def _expect(case, match: str, file: str, *, header: bool) -> None:
    """The problem is found by the full check, and by the header check iff ``header``."""
    for full in (True, False):
        if not full and not header:
            check_case(case, full=False)
            continue
        with pytest.raises(CaseError, match=match) as info:
            check_case(case, full=full)
        assert info.value.case == S
        assert Path(str(info.value.path)).name == file
        assert S in str(info.value)
        assert file in str(info.value)
    with pytest.raises(CaseError, match=match):
        load_case(case)


def test_load_case_types_and_values(tmp_path: Path) -> None:
    vol = load_case(_case(tmp_path))
    assert vol.image.shape == (4, *SHAPE)
    assert vol.image.dtype == np.float32
    assert vol.label is not None
    assert vol.label.dtype == np.uint8
    assert set(np.unique(vol.label)) == {0, 1, 2, 4}
    np.testing.assert_allclose(vol.affine, affine())
    assert vol.spacing == (1.0, 1.0, 1.0)
    check_case(discover_cases(tmp_path).cases[S], full=True)


def test_load_case_channel_order_is_flair_t1_t1ce_t2(tmp_path: Path) -> None:
    case = _case(tmp_path)
    for i, key in enumerate(("flair", "t1", "t1ce", "t2")):
        rewrite(case.images[key], np.full(SHAPE, float(i + 1), np.float32))
    vol = load_case(case)
    assert [float(vol.image[i].mean()) for i in range(4)] == [1.0, 2.0, 3.0, 4.0]


def test_unlabelled_case_has_no_label(tmp_path: Path) -> None:
    assert load_case(_case(tmp_path, seg=False)).label is None


def test_raw_volumes_do_not_print_or_serialise(tmp_path: Path) -> None:
    vol = load_case(_case(tmp_path))
    assert "float32(4, 12, 12, 10)" in repr(vol)
    assert "[" not in repr(vol)
    with pytest.raises(DataError, match="must not be serialised"):
        pickle.dumps(vol)
    with pytest.raises(DataError):
        copy.deepcopy(vol)


def test_truncated_gz(tmp_path: Path) -> None:
    case = _case(tmp_path)
    path = _file(tmp_path, "t2")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(case, "truncated or corrupt", path.name, header=True)


def test_truncated_nii(tmp_path: Path) -> None:
    case = _case(tmp_path, suffix=".nii")
    path = _file(tmp_path, "t1", ".nii")
    path.write_bytes(path.read_bytes()[:1000])
    _expect(case, "truncated file", path.name, header=True)


def test_gz_with_corrupt_payload(tmp_path: Path) -> None:
    case = _case(tmp_path)
    path = _file(tmp_path, "flair")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    # Only the full check reads the payload (and verifies the gzip CRC).
    _expect(case, "truncated or corrupt|unreadable", path.name, header=False)


# Explicit ids and a fixed gzip mtime: every xdist worker must collect the same test names.
@pytest.mark.parametrize(
    "content",
    [b"", b"not a nifti at all", gzip.compress(b"x" * 400, mtime=0)],
    ids=["empty", "text", "gzip-of-garbage"],
)
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    case = _case(tmp_path)
    path = _file(tmp_path, "t1ce")
    path.write_bytes(content)
    _expect(case, "unreadable|truncated", path.name, header=True)


def test_deleted_file_after_discovery(tmp_path: Path) -> None:
    case = _case(tmp_path)
    _file(tmp_path, "seg").unlink()
    _expect(case, "not found", f"{S}_seg.nii.gz", header=True)


def test_label_three_is_rejected(tmp_path: Path) -> None:
    case = _case(tmp_path)
    lab = np.zeros(SHAPE, np.uint8)
    lab[2, 2, 2] = 3
    rewrite(_file(tmp_path, "seg"), lab)
    _expect(case, r"labels \{3\} outside", f"{S}_seg.nii.gz", header=False)


@pytest.mark.parametrize("value", [-1.0, 7.0, 2.5])
def test_float_labels_outside_set(tmp_path: Path, value: float) -> None:
    case = _case(tmp_path)
    lab = np.zeros(SHAPE, np.float32)
    lab[1, 1, 1] = value
    rewrite(_file(tmp_path, "seg"), lab)
    _expect(case, "label", f"{S}_seg.nii.gz", header=False)


def test_float_seg_with_valid_labels_loads_as_uint8(tmp_path: Path) -> None:
    case = _case(tmp_path)
    lab = np.zeros(SHAPE, np.float64)
    lab[1, 1, 1] = 4.0
    rewrite(_file(tmp_path, "seg"), lab)
    vol = load_case(case)
    assert vol.label is not None
    assert vol.label.dtype == np.uint8
    assert vol.label.max() == 4


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path: Path, bad: float) -> None:
    case = _case(tmp_path)
    data = np.ones(SHAPE, np.float32)
    data[3, 4, 5] = bad
    rewrite(_file(tmp_path, "t1"), data)
    _expect(case, r"1 non-finite voxels .* first at \(3, 4, 5\)", f"{S}_t1.nii.gz", header=False)


@pytest.mark.parametrize("key", ["t2", "seg"])
def test_affine_mismatch(tmp_path: Path, key: str) -> None:
    case = _case(tmp_path)
    shifted = affine()
    shifted[0, 3] += 2.0
    data = np.zeros(SHAPE, np.uint8 if key == "seg" else np.float32)
    rewrite(_file(tmp_path, key), data, shifted)
    _expect(case, "affine differs from flair by 2", f"{S}_{key}.nii.gz", header=True)


@pytest.mark.parametrize("key", ["t1ce", "seg"])
def test_shape_mismatch(tmp_path: Path, key: str) -> None:
    case = _case(tmp_path)
    rewrite(_file(tmp_path, key), np.zeros((12, 12, 9), np.uint8))
    _expect(case, r"shape \(12, 12, 9\) differs from flair", f"{S}_{key}.nii.gz", header=True)


def test_4d_file_is_rejected_but_trailing_singleton_is_fine(tmp_path: Path) -> None:
    case = _case(tmp_path)
    rewrite(_file(tmp_path, "t2"), np.ones((*SHAPE, 1), np.float32))
    assert load_case(case).image.shape == (4, *SHAPE)
    rewrite(_file(tmp_path, "t2"), np.ones((*SHAPE, 2), np.float32))
    _expect(case, "expected a 3D volume", f"{S}_t2.nii.gz", header=True)


def test_implausibly_large_header_is_refused_before_decompressing(tmp_path: Path) -> None:
    case = _case(tmp_path)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((2048, 2048, 512))
    header.set_sform(affine(), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 64
    _file(tmp_path, "t1").write_bytes(gzip.compress(raw))
    _expect(case, "implausibly large volume", f"{S}_t1.nii.gz", header=True)


def _corrupt(root: Path, subject: str) -> None:
    path = root / subject / f"{subject}_flair.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def test_one_corrupt_case_is_named_and_the_others_load(tmp_path: Path) -> None:
    make_federation(tmp_path, [3, 2])
    _corrupt(tmp_path, "FeTS2022_00004")
    lab = np.zeros(SHAPE, np.uint8)
    lab[0, 0, 0] = 3
    rewrite(tmp_path / "FeTS2022_00002" / "FeTS2022_00002_seg.nii.gz", lab)
    header = load_federation(tmp_path, check="header")
    assert [p.subject_id for p in header.problems] == ["FeTS2022_00004"]
    fed = load_federation(tmp_path, check="full")
    assert sorted(fed.cases) == ["FeTS2022_00001", "FeTS2022_00003", "FeTS2022_00005"]
    assert [(p.subject_id, p.file) for p in fed.problems] == [
        ("FeTS2022_00002", "FeTS2022_00002_seg.nii.gz"),
        ("FeTS2022_00004", "FeTS2022_00004_flair.nii.gz"),
    ]
    summary = fed.summary()
    assert summary.startswith("3 cases loaded, 2 excluded: FeTS2022_00002 (FeTS2022_00002_seg")
    assert "FeTS2022_00004 (FeTS2022_00004_flair.nii.gz: truncated" in summary
    for subject in fed.cases:
        load_case(fed.cases[subject])


def test_parallel_full_check_matches_serial_and_reports_progress(tmp_path: Path) -> None:
    make_federation(tmp_path, [4, 2])
    _corrupt(tmp_path, "FeTS2022_00003")
    cases = discover_cases(tmp_path).cases.values()
    calls: list[tuple[int, int]] = []
    serial = check_cases(cases, level="full", workers=1)
    parallel = check_cases(
        cases, level="full", workers=2, progress=lambda d, t: calls.append((d, t))
    )
    assert serial == parallel
    assert [p.subject_id for p in parallel.problems] == ["FeTS2022_00003"]
    assert calls == [(i, 6) for i in range(1, 7)]


def test_all_cases_broken_is_no_cases(tmp_path: Path) -> None:
    make_federation(tmp_path, [2])
    _corrupt(tmp_path, "FeTS2022_00001")
    _corrupt(tmp_path, "FeTS2022_00002")
    with pytest.raises(NoCasesError, match="0 cases loaded, 2 excluded"):
        load_federation(tmp_path)
