"""The clustering's fixed projection is the release layer's geometry (one implementation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.clustering import columns, make_features, write_protocol

from securefed.clustering.fixed_projection import FixedProjection, derive_projection, projection_for
from securefed.clustering.scaling import scale_to_unit
from securefed.errors import ProtocolError
from securefed.privacy.bounds import load_pinned_bounds
from securefed.privacy.geometry import release_geometry
from securefed.protocol.loader import load_protocol

BOUNDS = 'mode = "secure-aggregate"\nbounds = {{ file = "bounds.json", sha256 = "{bsha}" }}\n'
SECURE = 'k = 5\n[clustering.secure]\nalgorithm = "dp-histogram"\nepsilon = 1.0\ndelta = 1e-6'
FILE = 'projection = "file"\nprojection_file = {{ file = "projection.json", sha256 = "{psha}" }}'


def _loaded(tmp_path: Path, release: str):
    return load_protocol(write_protocol(tmp_path, BOUNDS + release, SECURE))


def _study() -> np.ndarray:
    x = make_features(5)["matrix"]
    x[0, :5] += 1e3  # outside the declared box: clipped
    return x


def _formula(p: FixedProjection, x: np.ndarray) -> np.ndarray:
    """The securefed-projection file's definition, written out."""
    u = scale_to_unit(x, p.feature_lower, p.feature_upper)
    return scale_to_unit((u - p.center) @ p.matrix.T, p.lower, p.upper)


@pytest.mark.parametrize(
    "release",
    [
        FILE,
        'projection = "random"\ndimension = 3\nprojection_seed = 7',
        'projection = "subset"\nsubset = ["flair_glcm_F0", "t1_glcm_F3"]',
    ],  # fmt: skip
)
def test_projection_is_the_release_geometry(tmp_path: Path, release: str) -> None:
    loaded = _loaded(tmp_path, release)
    proj = projection_for(loaded, columns())
    geo = release_geometry(loaded, load_pinned_bounds(loaded))
    x = _study()
    y = proj(x)
    assert proj.columns == tuple(columns())
    assert proj.dimension == geo.dimension
    np.testing.assert_array_equal(y, geo.to_release_space(x))
    np.testing.assert_allclose(y, _formula(proj, x), atol=1e-12)
    assert y.min() >= 0.0
    assert y.max() <= 1.0


def test_file_round_trip_keeps_the_parameters(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path, FILE)
    proj = projection_for(loaded, columns())
    pinned = json.loads((tmp_path / "projection.json").read_bytes())
    assert json.loads(proj.to_json_bytes()) == pinned
    assert pinned["source"] == "test ref"
    assert np.shape(pinned["matrix"]) == (3, len(columns()))


def test_derive_projection_is_pca_of_the_reference(tmp_path: Path) -> None:
    ref = make_features(99)["matrix"]
    lo, hi = ref.min(0) - 1, ref.max(0) + 1
    unit = scale_to_unit(ref, lo, hi)
    proj = derive_projection(unit, columns(), lo, hi, 2, source="ref", margin=0.1)
    y = proj(ref)
    assert y.shape == (len(ref), 2)
    # reference points land inside the 10%-widened box: [1/12, 11/12] per coordinate
    assert y.min() >= 1 / 12 - 1e-9
    assert y.max() <= 11 / 12 + 1e-9
    np.testing.assert_allclose(y, _formula(proj, ref), atol=1e-12)


def test_none_and_missing_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="'none' would keep all features"):
        projection_for(_loaded(tmp_path / "a", 'projection = "none"'), columns())
    loaded = _loaded(tmp_path / "b", FILE)
    with pytest.raises(ProtocolError, match="not in the table"):
        projection_for(loaded, columns()[:-1])
