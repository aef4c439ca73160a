"""The paper's server-side clustering as a scikit-learn style estimator.

Scaling (percentile 2..98 fitted on the given train+val rows, or declared bounds), PCA, then
GaussianMixture (tied covariance by default), KMeans or agglomerative (Ward). ``k`` is fixed or
selected in ``[k_min, k_max]`` by BIC (GMM, lower is better) or silhouette (others, higher is
better); every score is kept in ``k_scores_``.

Agglomerative clustering has no ``predict``: after fitting, every case (training cases included) is
assigned to the nearest cluster mean in PCA space, so the site-side ``assign`` equals ``predict``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from securefed.clustering.model import ClusterModel
from securefed.clustering.scaling import BoundsScaler, PercentileScaler
from securefed.errors import ClusteringError

__all__ = ["RadiomicsClusterer"]

Algorithm = Literal["gmm", "kmeans", "agglomerative"]


class RadiomicsClusterer:
    """Scale -> PCA -> cluster. Learned state: ``scaler_``, ``pca_``, ``k_``, ``k_scores_``,
    ``estimator_``, ``model_`` (the exportable :class:`ClusterModel`)."""

    def __init__(
        self,
        algorithm: Algorithm = "gmm",
        k: int = 10,
        k_selection: Literal["fixed", "bic", "silhouette"] = "fixed",
        k_min: int = 2,
        k_max: int = 12,
        scaling: Literal["percentile", "declared-bounds"] = "percentile",
        percentile_low: float = 2.0,
        percentile_high: float = 98.0,
        pca_components: int = 30,
        covariance_type: str = "tied",
        n_init: int = 20,
        max_iter: int = 100,
        seed: int = 6,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.k = k
        self.k_selection = k_selection
        self.k_min = k_min
        self.k_max = k_max
        self.scaling = scaling
        self.percentile_low = percentile_low
        self.percentile_high = percentile_high
        self.pca_components = pca_components
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.max_iter = max_iter
        self.seed = seed
        self.lower = lower
        self.upper = upper

    @classmethod
    def from_spec(
        cls, spec: Any, lower: np.ndarray | None = None, upper: np.ndarray | None = None
    ) -> RadiomicsClusterer:
        """Build from a ``securefed.protocol.schema.ClusteringSpec``."""
        names = [
            "algorithm", "k", "k_selection", "k_min", "k_max", "scaling", "percentile_low",
            "percentile_high", "pca_components", "covariance_type", "n_init", "max_iter", "seed",
        ]  # fmt: skip
        return cls(**{n: getattr(spec, n) for n in names}, lower=lower, upper=upper)

    # ------------------------------------------------------------------------------------------
    def _make_scaler(self) -> PercentileScaler | BoundsScaler:
        if self.scaling == "declared-bounds":
            if self.lower is None or self.upper is None:
                raise ClusteringError(
                    "clustering.scaling = 'declared-bounds' needs the protocol's bounds file "
                    "(release.bounds)"
                )
            return BoundsScaler(self.lower, self.upper)
        return PercentileScaler(self.percentile_low, self.percentile_high)

    def _fit_k(self, z: np.ndarray, k: int) -> Any:
        from sklearn.cluster import AgglomerativeClustering, KMeans
        from sklearn.mixture import GaussianMixture

        if self.algorithm == "gmm":
            return GaussianMixture(
                n_components=k,
                covariance_type=self.covariance_type,
                n_init=self.n_init,
                max_iter=self.max_iter,
                random_state=self.seed,
            ).fit(z)
        if self.algorithm == "kmeans":
            return KMeans(
                n_clusters=k, n_init=self.n_init, max_iter=self.max_iter, random_state=self.seed
            ).fit(z)
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit(z)

    def _labels(self, est: Any, z: np.ndarray) -> np.ndarray:
        return est.labels_ if self.algorithm == "agglomerative" else est.predict(z)

    def fit(self, x: np.ndarray) -> RadiomicsClusterer:
        """Fit on the rows of ``x`` (the caller passes train+val cases only)."""
        from sklearn.decomposition import PCA
        from sklearn.metrics import silhouette_score

        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or not np.all(np.isfinite(x)):
            raise ClusteringError("clustering: the feature table must be 2-D and contain no NaN")
        n = x.shape[0]
        ks = [self.k] if self.k_selection == "fixed" else list(range(self.k_min, self.k_max + 1))
        ks = [k for k in ks if k <= n]
        if not ks:
            raise ClusteringError(
                f"clustering: {n} training cases are fewer than k={self.k} (or k_min); "
                "lower clustering.k / clustering.k_min"
            )
        self.scaler_ = self._make_scaler().fit(x)
        z = self.scaler_.transform(x)
        ncomp = min(self.pca_components, n, x.shape[1])
        self.pca_ = PCA(n_components=ncomp, random_state=self.seed).fit(z)
        z = self.pca_.transform(z)
        self.k_scores_: dict[int, float] = {}
        fits: dict[int, Any] = {}
        for k in ks:
            est = self._fit_k(z, k)
            fits[k] = est
            if self.k_selection == "bic":
                if self.algorithm != "gmm":
                    raise ClusteringError("clustering.k_selection = 'bic' needs algorithm = 'gmm'")
                self.k_scores_[k] = float(est.bic(z))
            elif self.k_selection == "silhouette":
                labels = self._labels(est, z)
                ok = 2 <= len(set(labels.tolist())) < n
                self.k_scores_[k] = float(silhouette_score(z, labels)) if ok else float("nan")
        if self.k_selection == "bic":
            self.k_ = min(self.k_scores_, key=lambda k: self.k_scores_[k])
        elif self.k_selection == "silhouette":
            valid = {k: s for k, s in self.k_scores_.items() if np.isfinite(s)}
            if not valid:
                raise ClusteringError("clustering: silhouette undefined for every k in the range")
            self.k_ = max(valid, key=lambda k: valid[k])
        else:
            self.k_ = ks[0]
        self.estimator_ = fits[self.k_]
        self.model_ = self._export(z)
        return self

    def _export(self, z: np.ndarray) -> ClusterModel:
        est = self.estimator_
        common = dict(
            columns=[],
            scale_low=self.scaler_.low_,
            scale_high=self.scaler_.high_,
            pca_mean=self.pca_.mean_,
            pca_components=self.pca_.components_,
            meta={
                "algorithm": self.algorithm,
                "k_selection": self.k_selection,
                "k_scores": {str(k): v for k, v in self.k_scores_.items()},
                "scaling": self.scaling,
                "pca_explained_variance_ratio": self.pca_.explained_variance_ratio_.tolist(),
            },
        )
        if self.algorithm == "gmm":
            return ClusterModel(
                rule="gmm",
                means=est.means_,
                weights=est.weights_,
                prec_chol=est.precisions_cholesky_,
                covariance_type=est.covariance_type,
                **common,
            )
        if self.algorithm == "kmeans":
            return ClusterModel(rule="nearest-mean", means=est.cluster_centers_, **common)
        labels = est.labels_
        means = np.stack([z[labels == j].mean(0) for j in range(self.k_)])
        return ClusterModel(rule="nearest-mean", means=means, **common)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Cluster of each row: the estimator's predict (GMM, k-means) or the nearest mean
        (agglomerative), always equal to ``model_.assign``."""
        z = self.pca_.transform(self.scaler_.transform(np.asarray(x, dtype=np.float64)))
        if self.algorithm == "agglomerative":
            d2 = ((z[:, None, :] - self.model_.means[None]) ** 2).sum(-1)
            return np.argmin(d2, axis=1).astype(np.int64)
        return self.estimator_.predict(z).astype(np.int64)
