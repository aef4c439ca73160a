"""One synthetic case: labels, shared geometry, tissue contrast, determinism, scanner texture."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from securefed.data.synth.anatomy import output_grid
from securefed.data.synth.case import MIN_VOLUME_ML, SynthCase, make_case
from securefed.data.synth.contrast import MODALITIES
from securefed.data.synth.presets import CaseSpec
from securefed.data.synth.scanners import SCANNERS

GRID = output_grid(4.0)


def _case(index: int, scanner: str = "siemens-3t", seed: int = 0) -> SynthCase:
    return make_case(CaseSpec("FeTS2022_00001", index, 1, scanner, seed), GRID, keep_tissue=True)


@pytest.fixture(scope="module")
def cases() -> list[SynthCase]:
    scanners = ("siemens-3t", "ge-1.5t", "philips-3t")
    return [_case(i + 1, s) for i, s in enumerate(scanners)]


def test_labels_present_with_enough_volume(cases: list[SynthCase]) -> None:
    for case in cases:
        assert case.seg.dtype == np.uint8
        assert set(np.unique(case.seg)) == {0, 1, 2, 4}
        for name, label in (("ncr", 1), ("ed", 2), ("et", 4)):
            assert case.volumes_ml[name] >= MIN_VOLUME_ML[name]
            assert (case.seg == label).sum() >= 8
        v = case.volumes_ml
        assert v["tc"] == pytest.approx(v["ncr"] + v["et"], abs=1e-2)
        assert v["wt"] == pytest.approx(v["tc"] + v["ed"], abs=1e-2)


def test_geometry_skull_strip_and_flair_mask(cases: list[SynthCase]) -> None:
    for case in cases:
        brain = case.tissue["brain"] > 0.5
        assert np.all(case.seg[~brain] == 0)
        for m in MODALITIES:
            img = case.images[m]
            assert img.shape == case.seg.shape == GRID.shape
            assert img.dtype == np.int16
            assert np.array_equal(img > 0, brain), m  # zero background, > 0 in the brain
            assert img.min() >= 0


def _mean(img: np.ndarray, where: np.ndarray) -> float:
    assert where.sum() > 20
    return float(img[where].mean())


def test_tissue_contrast_order(cases: list[SynthCase]) -> None:
    for case in cases:
        t, seg = case.tissue, case.seg
        healthy = ndimage.binary_dilation(seg > 0, iterations=2) == 0
        wm, gm = (t["wm"] > 0.8) & healthy, (t["gm"] > 0.7) & healthy
        csf = (t["csf"] > 0.8) & healthy
        ed, et = seg == 2, seg == 4
        im = {m: case.images[m].astype(np.float64) for m in MODALITIES}
        assert _mean(im["t1"], wm) > _mean(im["t1"], gm) > _mean(im["t1"], csf)
        assert _mean(im["t1ce"], et) > _mean(im["t1ce"], wm)
        assert _mean(im["t1ce"], et) > _mean(im["t1"], et) * (
            _mean(im["t1ce"], wm) / _mean(im["t1"], wm)
        )
        assert _mean(im["t2"], csf) > _mean(im["t2"], gm) > _mean(im["t2"], wm)
        assert _mean(im["t2"], ed) > _mean(im["t2"], wm)
        assert _mean(im["flair"], csf) < _mean(im["flair"], wm)
        assert _mean(im["flair"], ed) > _mean(im["flair"], gm) > _mean(im["flair"], csf)


def test_deterministic_per_seed_and_index() -> None:
    a, b = _case(7), _case(7)
    assert np.array_equal(a.seg, b.seg)
    assert all(np.array_equal(a.images[m], b.images[m]) for m in MODALITIES)
    c = _case(7, seed=1)
    assert not np.array_equal(a.images["t1"], c.images["t1"])
    assert not np.array_equal(a.seg, _case(8).seg)


def _texture(case: SynthCase) -> np.ndarray:
    """Noise (MAD of the Laplacian in deep white matter), WM-GM contrast and z/x gradient ratio
    (slice thickness) of the z-scored T1 and FLAIR inside the brain."""
    out = []
    for m in ("t1", "flair"):
        img = case.images[m].astype(np.float32)
        brain = img > 0
        z = (img - img[brain].mean()) / img[brain].std()
        deep = ndimage.binary_erosion((case.tissue["wm"] > 0.9) & (case.seg == 0))
        lap = ndimage.laplace(z)[deep]
        cortex = (case.tissue["gm"] > 0.7) & (case.seg == 0)
        inner = ndimage.binary_erosion(brain, iterations=2)
        dz = np.abs(np.diff(z, axis=2))[inner[:, :, 1:] & inner[:, :, :-1]].mean()
        dx = np.abs(np.diff(z, axis=0))[inner[1:] & inner[:-1]].mean()
        out += [np.median(np.abs(lap - np.median(lap))), z[deep].mean() - z[cortex].mean(), dz / dx]
    return np.array(out)


@pytest.mark.slow
def test_scanners_differ_in_texture_more_than_within() -> None:
    texture_only = [s for s, p in SCANNERS.items() if not p.contrast]  # the contrast-shifted
    # acquisitions differ in tissue contrast instead (tested below)
    stats = {s: np.array([_texture(_case(20 + i, s)) for i in range(3)]) for s in texture_only}
    means = np.array([v.mean(axis=0) for v in stats.values()])
    within = np.mean([v.var(axis=0, ddof=1) for v in stats.values()], axis=0)
    fisher = means.var(axis=0, ddof=1) / within
    assert max(fisher[0], fisher[3]) > 5, fisher  # noise texture (T1 or FLAIR)
    assert max(fisher[2], fisher[5]) > 5, fisher  # anisotropy (slice thickness)
    # Every pair of scanners is told apart by at least one statistic.
    for a, b in itertools.combinations(stats, 2):
        pooled = np.sqrt((stats[a].var(axis=0, ddof=1) + stats[b].var(axis=0, ddof=1)) / 2)
        gap = np.abs(stats[a].mean(axis=0) - stats[b].mean(axis=0)) / pooled
        assert gap.max() > 1.0, (a, b, gap)


def test_contrast_shifted_scanners_change_what_z_scoring_keeps() -> None:
    """The `shifted` preset's acquisitions change tissue CONTRAST, not only intensity: after
    per-image z-scoring inside the brain, the enhancing rim is no brighter than white matter in
    T1ce under weak enhancement, and CSF is bright in an unsuppressed FLAIR."""

    def z(case: SynthCase, m: str) -> np.ndarray:
        img = case.images[m].astype(float)
        inside = case.tissue["brain"] > 0.5
        return (img - img[inside].mean()) / img[inside].std()

    def rim_over_wm(case: SynthCase) -> float:
        wm = (case.tissue["wm"] > 0.9) & (case.seg == 0)
        return _mean(z(case, "t1ce"), case.seg == 4) - _mean(z(case, "t1ce"), wm)

    def csf_over_wm(case: SynthCase) -> float:
        wm = (case.tissue["wm"] > 0.9) & (case.seg == 0)
        csf = (case.tissue["csf"] > 0.9) & (case.seg == 0)
        return _mean(z(case, "flair"), csf) - _mean(z(case, "flair"), wm)

    standard, weak, unsuppressed = (
        _case(7, s) for s in ("siemens-3t", "ge-1.5t-weak-enhancement",
                              "philips-3t-flair-unsuppressed")
    )  # fmt: skip
    assert rim_over_wm(standard) > 1.0
    assert rim_over_wm(weak) < 0.5 * rim_over_wm(standard)
    assert csf_over_wm(standard) < 0 < csf_over_wm(unsuppressed)


def test_an_enhancement_only_shift_leaves_healthy_tissue_alone() -> None:
    """`siemens-3t-enhancement-only` (fets-1251-shifted's tumour-confined group): the same case
    on it and on siemens-3t has the same images outside the tumour, bit for bit in every
    modality but T1ce, where only voxels near the tumour differ; the enhancing rim loses its
    contrast over white matter."""
    standard, shifted = _case(7, "siemens-3t"), _case(7, "siemens-3t-enhancement-only")
    for m in MODALITIES:
        same = standard.images[m] == shifted.images[m]
        if m != "t1ce":
            assert same.all(), m
            continue
        near = ndimage.binary_dilation(standard.seg > 0, iterations=3)
        assert same[~near].mean() > 0.99  # outside the tumour: the same acquisition
        assert not same[standard.seg == 4].all()
    wm = (standard.tissue["wm"] > 0.9) & (standard.seg == 0)
    rim = standard.seg == 4
    gap = [_mean(c.images["t1ce"].astype(float), rim) - _mean(c.images["t1ce"].astype(float), wm)
           for c in (standard, shifted)]  # fmt: skip
    assert gap[1] < 0.3 * gap[0]
