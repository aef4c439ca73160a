"""The adapter's values equal a direct pyradiomics call with the same settings."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from radiomics import imageoperations
from radiomics.featureextractor import RadiomicsFeatureExtractor
from support.radiomics import volume

from securefed.errors import CaseError, FeatureError
from securefed.protocol.schema import MODALITIES, RadiomicsSpec
from securefed.radiomics import (
    case_ranges,
    case_vector,
    columns,
    extract_modality,
    modality_columns,
    preprocess,
    shared_edges,
)

SPACING = (1.0, 1.0, 1.5)


def reference_preprocess(img, label, mask, normalisation):
    """The paper's preprocessing written out independently of securefed."""
    fg = np.any(img != 0, axis=0)
    idx = np.argwhere(fg)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = img[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float64)
    head = box[0] > 0
    roi = (
        head & (label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] == 0)
        if mask != "brain"
        else head
    )
    out = np.empty_like(box)
    for c in range(4):
        ref = box[c] if normalisation == "crop-box" else box[c][head]
        out[c] = (box[c] - ref.mean()) / ref.std()
    return out, roi


def direct(image3d, roi, bin_width, classes=None):
    """Plain pyradiomics on in-memory images, keyed by our column suffix (class_Feature)."""
    extractor = RadiomicsFeatureExtractor(binWidth=bin_width)
    if classes is not None:
        extractor.disableAllFeatures()
        for cls in classes:
            extractor.enableFeatureClassByName(cls)
    im = sitk.GetImageFromArray(image3d.T.copy())
    im.SetSpacing(SPACING)
    mk = sitk.GetImageFromArray(roi.T.astype(np.uint8).copy())
    mk.SetSpacing(SPACING)
    result = extractor.execute(im, mk)
    return {
        k[len("original_") :]: float(v)
        for k, v in result.items()
        if k.startswith("original_") and not k.startswith("original_shape")
    }


def test_columns_are_stable_and_named():
    cols = columns()
    assert len(cols) == 372
    assert len(set(cols)) == 372
    assert "flair_glcm_Contrast" in cols
    assert "t2_ngtdm_Strength" in cols
    assert all(
        len(modality_columns(m, ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"))) == 93
        for m in MODALITIES
    )
    assert cols[:93] == modality_columns("flair", RadiomicsSpec().feature_classes)
    assert not any("shape" in c or "diagnostics" in c for c in cols)
    assert columns(("ngtdm",)) == tuple(
        f"{m}_ngtdm_{n}"
        for m in MODALITIES
        for n in ("Busyness", "Coarseness", "Complexity", "Contrast", "Strength")
    )


@pytest.mark.parametrize(
    ("mask", "normalisation"),
    [("brain", "crop-box"), ("brain-without-tumour", "brain")],
)
def test_adapter_equals_direct_pyradiomics(mask, normalisation):
    img, label = volume(1)
    spec = RadiomicsSpec(mask=mask, normalisation=normalisation, bin_width=0.09)
    ours = case_vector(img, label, SPACING, spec, subject_id="FeTS2022_00001")
    assert ours.shape == (372,)
    assert np.all(np.isfinite(ours))
    ref_img, roi = reference_preprocess(img, label, mask, normalisation)
    cols = columns()
    for c, m in enumerate(MODALITIES):
        ref = direct(ref_img[c], roi, 0.09)
        assert len(ref) == 93
        expected = np.array([ref[col[len(m) + 1 :]] for col in cols[93 * c : 93 * (c + 1)]])
        np.testing.assert_allclose(ours[93 * c : 93 * (c + 1)], expected, rtol=1e-10, atol=0)


def test_masks_and_normalisations_change_the_features():
    img, label = volume(2)
    a = case_vector(img, label, SPACING, RadiomicsSpec(), subject_id="c")
    b = case_vector(img, label, SPACING, RadiomicsSpec(mask="brain-without-tumour"), subject_id="c")
    c = case_vector(img, label, SPACING, RadiomicsSpec(normalisation="brain"), subject_id="c")
    assert not np.allclose(a, b)
    assert not np.allclose(a, c)


def test_subset_of_classes():
    img, label = volume(3)
    spec = RadiomicsSpec(feature_classes=("glcm", "firstorder"))
    v = case_vector(img, label, SPACING, spec, subject_id="c")
    assert v.shape == (4 * 42,)
    ref_img, roi = reference_preprocess(img, label, "brain", "crop-box")
    ref = direct(ref_img[2], roi, 0.09, classes=("glcm", "firstorder"))
    cols = columns(spec.feature_classes)[2 * 42 : 3 * 42]
    np.testing.assert_allclose(v[84:126], [ref[c[len("t1ce_") :]] for c in cols], rtol=1e-10)


def test_shared_edges_equal_the_papers_replaced_getbinedges(monkeypatch):
    """Shared binning equals the paper's code: pyradiomics with getBinEdges replaced by one that
    returns arange(min - min % W, max + 2W, W) over the dataset's range."""
    spec = RadiomicsSpec(binning="shared", bin_width=0.1)
    cases = [volume(s) for s in (4, 13)]
    ranges = [case_ranges(i, lab, spec, subject_id="c") for i, lab in cases]
    edges = {m: shared_edges([r[m] for r in ranges], 0.1) for m in MODALITIES}
    img, label = cases[0]
    ours = case_vector(img, label, SPACING, spec, subject_id="c", edges=edges)
    per_image = case_vector(img, label, SPACING, RadiomicsSpec(bin_width=0.1), subject_id="c")
    assert not np.allclose(ours, per_image)  # the grey-level offsets differ
    ref_img, roi = reference_preprocess(img, label, "brain", "crop-box")
    cols = columns()
    for c, m in enumerate(MODALITIES):
        lo = min(r[m][0] for r in ranges)
        hi = max(r[m][1] for r in ranges)

        def papers_edges(values, lo=lo, hi=hi, **kwargs):
            return np.arange(lo - (lo % 0.1), hi + 2 * 0.1, 0.1)

        monkeypatch.setattr(imageoperations, "getBinEdges", papers_edges)
        ref = direct(ref_img[c], roi, 0.1)
        monkeypatch.undo()
        expected = [ref[col[len(m) + 1 :]] for col in cols[93 * c : 93 * (c + 1)]]
        np.testing.assert_allclose(ours[93 * c : 93 * (c + 1)], expected, rtol=1e-10)


def test_shared_edges_of_one_case_equal_per_image_binning():
    img, label = volume(6)
    spec = RadiomicsSpec(binning="shared")
    r = case_ranges(img, label, spec, subject_id="c")
    edges = {m: shared_edges([r[m]], spec.bin_width) for m in MODALITIES}
    shared = case_vector(img, label, SPACING, spec, subject_id="c", edges=edges)
    per_image = case_vector(img, label, SPACING, RadiomicsSpec(), subject_id="c")
    np.testing.assert_allclose(shared, per_image, rtol=1e-10)


def test_hook_leaves_plain_pyradiomics_untouched():
    img, label = volume(7)
    case_vector(img, label, SPACING, RadiomicsSpec(), subject_id="c")  # installs the hook
    values = np.array([0.05, 0.31, 0.77])
    np.testing.assert_array_equal(
        imageoperations.getBinEdges(values, binWidth=0.25), np.arange(0.0, 0.77 + 0.5, 0.25)
    )


def test_shared_binning_needs_edges_and_checks_coverage():
    img, label = volume(8)
    spec = RadiomicsSpec(binning="shared")
    with pytest.raises(FeatureError, match="case c9: binning 'shared' needs"):
        case_vector(img, label, SPACING, spec, subject_id="c9")
    narrow = {m: (0.0, 0.09, 0.18) for m in MODALITIES}
    with pytest.raises(FeatureError, match=r"case c9, modality flair: .* outside the shared bin"):
        case_vector(img, label, SPACING, spec, subject_id="c9", edges=narrow)


def test_failures_name_case_modality_and_feature():
    img, label = volume(9)
    pre = preprocess(img, label, subject_id="c")
    bad = pre.image[1].copy()
    bad[tuple(np.argwhere(pre.mask)[0])] = np.nan
    with pytest.raises(FeatureError, match=r"case FeTS_7, modality t1, all features: non-finite"):
        extract_modality(
            bad, pre.mask, SPACING, spec=RadiomicsSpec(), subject_id="FeTS_7", modality="t1"
        )
    single = np.zeros_like(pre.mask)
    single[tuple(np.argwhere(pre.mask)[0])] = True
    with pytest.raises(
        FeatureError, match=r"case FeTS_7, modality t2, all features: pyradiomics failed"
    ):
        extract_modality(
            pre.image[3], single, SPACING, spec=RadiomicsSpec(), subject_id="FeTS_7", modality="t2"
        )


def test_preprocess_errors_name_the_case():
    img, label = volume(10)
    with pytest.raises(CaseError, match="case X1: every voxel"):
        preprocess(np.zeros_like(img), label, subject_id="X1")
    with pytest.raises(CaseError, match="case X2: mask 'brain-without-tumour' needs"):
        preprocess(img, None, subject_id="X2", mask="brain-without-tumour")
    flat = img.copy()
    flat[2] = np.where(img[0] != 0, 5.0, 0.0)
    with pytest.raises(FeatureError, match="case X3, modality t1ce: constant"):
        preprocess(flat, label, subject_id="X3", normalisation="brain")


def test_preprocess_crops_and_masks_like_the_paper():
    img, _label = volume(11)
    padded = np.zeros((4, 50, 50, 40), dtype=np.float32)
    padded[:, 3:43, 5:45, 2:32] = img
    pre = preprocess(padded, None, subject_id="c")
    direct_pre = preprocess(img, None, subject_id="c")
    np.testing.assert_array_equal(pre.mask, direct_pre.mask)
    np.testing.assert_allclose(pre.image, direct_pre.image, rtol=1e-12)
    assert pre.mask.sum() == (pre.image[0] > pre.image[0].min()).sum()
    for c in range(4):
        assert abs(pre.image[c].mean()) < 1e-9
        assert abs(pre.image[c].std() - 1) < 1e-9
    assert "Preprocessed(shape=" in repr(pre)
