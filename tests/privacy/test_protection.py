"""protect_features: plain and local-dp releases, refusal before noise, and the ledger."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support.privacy import COLUMNS, load, site_table

from securefed.errors import BudgetExceededError, PrivacyError, ProtocolError
from securefed.privacy import noise as noise_module
from securefed.privacy.ledger import Ledger
from securefed.privacy.protection import (
    GRID,
    protect_features,
    release_space,
    released_bounds,
)

LOCAL = 'mode = "local-dp"\nepsilon = 1.0\ndelta = 1e-5\n'


def test_plain_release_is_the_table_with_epsilon_inf(tmp_path):
    loaded = load(tmp_path, scaling="percentile")
    ids, cols, x = site_table()
    out = protect_features((ids, cols, x), loaded, None, "site-1")
    assert out.columns == COLUMNS
    assert np.array_equal(out.matrix, x)
    assert math.isinf(out.epsilon)
    assert out.metadata["mechanism"] is None


def test_local_dp_release_charges_the_ledger_and_adds_noise(tmp_path):
    loaded = load(tmp_path, release=LOCAL + 'projection = "random"\ndimension = 4')
    led = Ledger.for_protocol(tmp_path / "ledger", loaded, "site-1")
    ids, cols, x = site_table()
    written = []
    out = protect_features(
        (ids, cols, x, ["train"] * len(ids)), loaded, led, "site-1", write=written.append
    )
    assert written == [out]
    assert out.matrix.shape == (len(ids), 4)
    assert out.columns[0] == "proj_000"
    assert out.metadata["noise_source"] == "os-csprng"
    assert out.epsilon == 1.0
    assert out.metadata["sigma"] > 0
    assert np.isfinite(out.matrix).all()
    assert out.splits == ("train",) * len(ids)
    state = led.verify()
    assert state.committed == {out.metadata["release_id"]}
    assert state.spent() == pytest.approx(1.0)
    assert released_bounds(loaded).columns == out.columns


def test_refusal_past_the_budget_draws_no_noise(tmp_path, monkeypatch):
    loaded = load(tmp_path, release=LOCAL.replace("1.0", "2.0"))
    led = Ledger.for_protocol(tmp_path / "ledger", loaded, "site-1")
    ids, cols, x = site_table()
    protect_features((ids, cols, x), loaded, led, "site-1")
    calls = []
    real = noise_module._random_bytes
    monkeypatch.setattr(noise_module, "_random_bytes", lambda n: calls.append(n) or real(n))
    sampler = noise_module._discrete_sample
    monkeypatch.setattr(noise_module, "_discrete_sample", lambda *a: calls.append(a) or sampler(*a))
    with pytest.raises(BudgetExceededError, match="before any noise"):
        protect_features((ids, cols, x), loaded, led, "site-1", release_id="second")
    assert calls == []
    assert len(led.verify().charges) == 1


def test_seeded_release_is_reproducible_only_in_simulation(tmp_path):
    ids, cols, x = site_table()
    loaded = load(
        tmp_path / "a",
        release=LOCAL + 'mechanism = "gaussian"',
        privacy="unsafe_seeded_noise = true",
    )
    runs = []
    for i in range(2):
        led = Ledger.for_protocol(tmp_path / f"l{i}", loaded, "site-1")
        runs.append(protect_features((ids, cols, x), loaded, led, "site-1", unsafe_seed=5))
    assert np.array_equal(runs[0].matrix, runs[1].matrix)
    assert runs[0].metadata["noise_source"] == "unsafe-seeded"
    strict = load(tmp_path / "b", release=LOCAL)
    led = Ledger.for_protocol(tmp_path / "l2", strict, "site-1")
    with pytest.raises(PrivacyError, match="unsafe_seed"):
        protect_features((ids, cols, x), strict, led, "site-1", unsafe_seed=5)


def test_laplace_subset_release_in_feature_units(tmp_path):
    release = (
        'mode = "local-dp"\nmechanism = "laplace"\nepsilon = 1.0\ndelta = 0.0\n'
        f'projection = "subset"\nsubset = {list(COLUMNS[:3])!r}'.replace("'", '"')
    )
    loaded = load(tmp_path, release=release)
    led = Ledger.for_protocol(tmp_path / "ledger", loaded, "site-1")
    ids, cols, x = site_table()
    out = protect_features((ids, cols, x), loaded, led, "site-1")
    assert out.columns == COLUMNS[:3]
    # L1 = 3 in the unit box, eps = 1, plus the grid's rounding (1 grid step per coordinate)
    assert out.metadata["scale"] == pytest.approx(3.0 + 3 * GRID)
    assert led.spent() == pytest.approx(1.0)


def test_wrong_columns_and_tampered_bounds_are_refused(tmp_path):
    loaded = load(tmp_path, release=LOCAL)
    led = Ledger.for_protocol(tmp_path / "ledger", loaded, "site-1")
    ids, cols, x = site_table()
    with pytest.raises(PrivacyError, match="do not match the bounds"):
        protect_features((ids, cols[::-1], x), loaded, led, "site-1")
    (tmp_path / "bounds.json").write_text((tmp_path / "bounds.json").read_text() + " ")
    with pytest.raises(ProtocolError, match="release.bounds.sha256"):
        protect_features((ids, cols, x), loaded, led, "site-1")
    assert not led.path.exists() or not led.verify().charges


def test_release_space_maps_own_vectors_like_the_release_without_noise(tmp_path, monkeypatch):
    """What a site uses to assign its own cases: the release's columns and units, no noise."""
    ids, cols, x = site_table()
    plain = load(tmp_path / "plain", scaling="percentile")
    released = protect_features((ids, cols, x), plain, None, "site-1")
    assert np.array_equal(release_space(plain, cols, x), released.matrix)

    subset = list(COLUMNS[:3])
    release = (
        'mode = "local-dp"\nmechanism = "laplace"\nepsilon = 1.0\ndelta = 0.0\n'
        f'projection = "subset"\nsubset = {subset!r}'.replace("'", '"')
    )
    loaded = load(tmp_path / "dp", release=release)
    calls = []
    monkeypatch.setattr(noise_module, "_random_bytes", lambda n: calls.append(n) or b"")
    y = release_space(loaded, cols, x)
    bounds = released_bounds(loaded)
    assert bounds.columns == tuple(subset)
    assert y.shape == (len(ids), 3)
    assert np.allclose(y, np.clip(x[:, :3], bounds.lower, bounds.upper))
    assert calls == []  # nothing drawn, nothing charged (no ledger exists)


def test_released_values_lie_on_the_grid_and_resist_the_float_replay(tmp_path):
    """Mironov's attack on floating-point noise: replaying the sampler's arithmetic tells which
    input an output came from, because float outputs near one input cannot arise from the other
    (84 % of outputs in one dimension with the old inverse-CDF sampler). The release is now an
    integer vector on GRID * Z^d with exact discrete noise, so every output is possible under
    every input: each released coordinate is an exact grid point (privacy-claims issue,
    finding 2)."""
    from securefed.privacy.bounds import load_pinned_bounds
    from securefed.privacy.clipping import to_unit_box
    from securefed.privacy.geometry import release_geometry

    for mechanism in ("gaussian", "laplace"):
        release = LOCAL.replace(
            "delta = 1e-5", "delta = 0.0" if mechanism == "laplace" else "delta = 1e-5"
        )
        loaded = load(tmp_path / mechanism, release=release + f'mechanism = "{mechanism}"')
        led = Ledger.for_protocol(tmp_path / mechanism / "ledger", loaded, "site-1")
        ids, cols, x = site_table()
        out = protect_features((ids, cols, x), loaded, led, "site-1")
        assert out.metadata["grid"] == GRID
        assert "discrete" in out.metadata["sampler"]
        geo = release_geometry(loaded, load_pinned_bounds(loaded))
        unit = out.matrix if geo.selected is None else to_unit_box(out.matrix, geo.output_bounds())
        steps = np.asarray(unit) / GRID
        assert np.abs(steps - np.rint(steps)).max() < 1e-6, "a released value is off the grid"
        # Not a rounded copy of the input: the noise is there (at least a few grid steps).
        clean = np.rint(geo.to_release_space(x) / GRID)
        assert np.abs(np.rint(steps) - clean).mean() > 10
