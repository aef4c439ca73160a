"""The paper's pipeline: site-side assign equals the server's predict; export without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from support.clustering import make_features

from securefed.clustering import ClusterModel, PercentileScaler, RadiomicsClusterer


@pytest.fixture(scope="module")
def data() -> dict[str, object]:
    return make_features(0)


@pytest.mark.parametrize(
    ("algorithm", "cov"),
    [("gmm", "tied"), ("gmm", "full"), ("gmm", "diag"), ("gmm", "spherical"),
     ("kmeans", "tied"), ("agglomerative", "tied")],
)  # fmt: skip
def test_assign_equals_predict_after_export(
    data: dict[str, object], algorithm: str, cov: str, tmp_path: Path
) -> None:
    x = data["matrix"]
    est = RadiomicsClusterer(
        algorithm, k=5, pca_components=10, covariance_type=cov, n_init=2, seed=6
    ).fit(x[data["splits"] != "test"])
    est.model_.columns = [f"c{i}" for i in range(x.shape[1])]
    est.model_.save(tmp_path)
    model = ClusterModel.load(tmp_path)
    assert np.array_equal(model.assign(x), est.predict(x))
    if algorithm == "gmm":
        z = est.pca_.transform(est.scaler_.transform(x))
        ll = est.estimator_._estimate_weighted_log_prob(z)
        assert np.allclose(model.log_likelihood(model.embed(x)), ll, atol=1e-6)
    assert adjusted_rand_score(data["scanners"], model.assign(x)) > 0.9


def test_model_files_are_not_pickles(tmp_path: Path, data: dict[str, object]) -> None:
    est = RadiomicsClusterer("kmeans", k=3, pca_components=4, n_init=1).fit(data["matrix"])
    est.model_.columns = [f"c{i}" for i in range(372)]
    est.model_.save(tmp_path)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as npz:
        assert all(npz[name].dtype == np.float64 for name in npz.files)
    assert not list(tmp_path.glob("*.pkl"))


def test_bic_selects_the_number_of_scanners(data: dict[str, object]) -> None:
    est = RadiomicsClusterer(
        "gmm", k=4, k_selection="bic", k_min=2, k_max=8, pca_components=10, n_init=2
    ).fit(data["matrix"])
    assert est.k_ == 5
    assert sorted(est.k_scores_) == list(range(2, 9))
    sil = RadiomicsClusterer(
        "kmeans", k=4, k_selection="silhouette", k_min=2, k_max=8, pca_components=10, n_init=2
    ).fit(data["matrix"])
    assert sil.k_ == 5


def test_percentile_scaler_ignores_rows_it_was_not_fitted_on() -> None:
    rng = np.random.default_rng(0)
    fit = rng.normal(size=(100, 3))
    s = PercentileScaler(2, 98).fit(fit)
    outlier = np.array([[1e6, -1e6, 0.0]])
    assert np.allclose(s.transform(outlier)[0, :2], [1.0, 0.0])
    assert np.allclose(s.low_, np.percentile(fit, 2, axis=0))
