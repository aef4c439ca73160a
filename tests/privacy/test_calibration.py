"""Calibration never undershoots noise; clipping and sensitivity bounds always hold."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import norm
from support.privacy import COLUMNS, load

from securefed.errors import CalibrationError
from securefed.privacy.accounting import accountant_epsilon, make_accountant
from securefed.privacy.bounds import Bounds
from securefed.privacy.calibration import (
    calibrate_noise_multiplier,
    gaussian_sigma,
    laplace_scale,
)
from securefed.privacy.clipping import clip_to_bounds
from securefed.privacy.geometry import identity_geometry, release_geometry
from securefed.privacy.sensitivity import local_sensitivity


def exact_gaussian_delta(eps: float, sigma: float, sens: float) -> float:
    """Balle & Wang 2018, Thm 8, written independently of the code under test."""
    a = sens / (2 * sigma) - eps * sigma / sens
    b = -sens / (2 * sigma) - eps * sigma / sens
    return float(norm.cdf(a) - math.exp(eps) * norm.cdf(b))


epsilons = st.floats(0.05, 64.0)
deltas = st.sampled_from([1e-3, 1e-5, 1e-6, 1e-8])
sensitivities = st.floats(0.01, 100.0)


@settings(max_examples=200, deadline=None)
@given(epsilons, deltas, sensitivities)
def test_gaussian_calibration_never_exceeds_the_target(eps, delta, sens):
    sigma = gaussian_sigma(eps, delta, sens)
    assert exact_gaussian_delta(eps, sigma, sens) <= delta * (1 + 1e-7)
    # ... and is tight: 0.1% less noise would break the target.
    assert exact_gaussian_delta(eps, sigma * 0.999, sens) > delta


@settings(max_examples=200, deadline=None)
@given(epsilons, sensitivities)
def test_laplace_calibration_bounds_the_density_ratio(eps, l1):
    b = laplace_scale(eps, l1)
    # log density ratio of Laplace(b) and Laplace(b) shifted by l1, on a grid: max = l1 / b.
    x = np.linspace(-5 * (l1 + b), 5 * (l1 + b), 2001)
    ratio = (np.abs(x - l1) - np.abs(x)) / b
    assert ratio.max() <= eps * (1 + 1e-12)


def test_laplace_calibration_agrees_with_pld():
    b = laplace_scale(2.0, 3.0)
    acc = make_accountant("pld")
    acc.compose(dp_accounting.LaplaceDpEvent(b / 3.0))
    assert acc.get_epsilon(1e-9) <= 2.0 * (1 + 1e-3)


def test_rdp_is_looser_than_the_exact_gaussian_profile():
    sigma = gaussian_sigma(1.0, 1e-5, 1.0)
    assert accountant_epsilon([dp_accounting.GaussianDpEvent(sigma)], 1e-5, "rdp") > 1.0


@settings(max_examples=25, deadline=None)
@given(st.floats(0.2, 8.0), st.integers(1, 10))
def test_rdp_calibration_fits_the_stage(eps, rounds):
    def make(m):
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(m), rounds)

    m = calibrate_noise_multiplier(eps, 1e-6, make, lambda: make_accountant("rdp"))
    assert accountant_epsilon([make(m)], 1e-6, "rdp") <= eps
    assert accountant_epsilon([make(m * 0.99)], 1e-6, "rdp") > eps


def test_pld_calibration_fits_the_stage():
    def make(m):
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(m), 3)

    m = calibrate_noise_multiplier(1.0, 1e-6, make, lambda: make_accountant("pld"))
    assert accountant_epsilon([make(m)], 1e-6, "pld") <= 1.0
    # PLD is close to exact: 3 Gaussians of multiplier m are one of m / sqrt(3).
    exact = gaussian_sigma(1.0, 1e-6, 1.0) * math.sqrt(3)
    assert exact <= m * (1 + 1e-3)
    assert m <= exact * 1.02


def test_calibration_rejects_bad_targets():
    for args in [(0.0, 1e-5, 1.0), (math.inf, 1e-5, 1.0), (1.0, 0.0, 1.0), (1.0, 1e-5, 0.0)]:
        with pytest.raises(CalibrationError):
            gaussian_sigma(*args)
    with pytest.raises(CalibrationError):
        laplace_scale(1.0, -1.0)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, (7, 3), elements=st.floats(-1e12, 1e12)),
    arrays(np.float64, 3, elements=st.floats(-1e6, 1e6)),
    arrays(np.float64, 3, elements=st.floats(1e-9, 1e6)),
)
def test_clipping_always_within_bounds(x, lower, width):
    upper = lower + width
    c = clip_to_bounds(x, lower, upper)
    assert np.all(c >= lower)
    assert np.all(c <= upper)
    inside = (x >= lower) & (x <= upper)
    assert np.array_equal(c[inside], x[inside])


def test_clipping_refuses_nan():
    with pytest.raises(ValueError):
        clip_to_bounds(np.array([[np.nan]]), np.zeros(1), np.ones(1))


unit_rows = arrays(np.float64, (2, len(COLUMNS)), elements=st.floats(-1e3, 1e3))


@pytest.fixture(scope="module")
def geometries(tmp_path_factory):
    base = tmp_path_factory.mktemp("geo")
    out = {}
    rnd = load(base / "random", release='projection = "random"\ndimension = 4\nprojection_seed = 3')
    from securefed.privacy.bounds import load_pinned_bounds

    bounds = load_pinned_bounds(rnd)
    out["random"] = release_geometry(rnd, bounds)
    out["none"] = identity_geometry(bounds)
    out["subset"] = identity_geometry(bounds, COLUMNS[:5])
    return out


@pytest.mark.parametrize("kind", ["random", "none", "subset"])
@pytest.mark.parametrize("relation", ["replace-one", "add-remove-one"])
def test_sensitivity_bounds_every_pair_of_cases(geometries, kind, relation):
    geo = geometries[kind]
    sens = local_sensitivity(geo, relation)

    @settings(max_examples=150, deadline=None)
    @given(unit_rows)
    def check(rows):
        # rows scaled far beyond the bounds: clipping keeps them in the declared domain
        y = geo.to_release_space(rows * geo.bounds.width + geo.bounds.lower)
        assert np.all((y >= 0) & (y <= 1))
        diff = y[0] - y[1]
        assert np.linalg.norm(diff) <= sens.l2 * (1 + 1e-12)
        assert np.abs(diff).sum() <= sens.l1 * (1 + 1e-12)

    check()
    # the box corners reach the identity bound exactly
    if kind != "random":
        corners = np.stack([geo.bounds.lower, geo.bounds.upper])
        y = geo.to_release_space(corners)
        assert np.linalg.norm(y[0] - y[1]) == pytest.approx(sens.l2)


def test_bounds_reject_bad_columns():
    with pytest.raises(Exception, match="lower < upper"):
        Bounds(("a",), np.array([1.0]), np.array([1.0]), "x")
