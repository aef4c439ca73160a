"""The fitted clustering model as plain data (arrays + JSON) and the site-side ``assign``.

The server exports a :class:`ClusterModel`; each site assigns its own train, val and test cases with
:meth:`ClusterModel.assign`, pure numpy, which equals the server's ``predict``. Nothing is pickled:
arrays go to ``model.npz`` (loaded with ``allow_pickle=False``) and metadata to ``model.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from securefed.clustering.scaling import scale_to_unit
from securefed.errors import ClusteringError
from securefed.fileio import atomic_write_bytes

__all__ = ["MODEL_FORMAT", "ClusterModel"]

MODEL_FORMAT = "securefed-cluster-model-v1"
Rule = Literal["gmm", "nearest-mean"]
_ARRAYS = ("scale_low", "scale_high", "pca_mean", "pca_components", "means", "weights", "prec_chol")


@dataclass
class ClusterModel:
    """Scaling -> optional linear projection -> a cluster rule, all as arrays.

    ``rule`` is ``gmm`` (argmax of weighted Gaussian log-likelihood; ``covariance_type`` tells the
    shape of ``prec_chol`` as in scikit-learn's ``precisions_cholesky_``) or ``nearest-mean``
    (k-means, agglomerative, secure-aggregate centroids).
    """

    columns: list[str]
    scale_low: np.ndarray
    scale_high: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray  # (n_components, n_features); identity-free: may be empty (0, 0)
    rule: Rule
    means: np.ndarray  # (k, d) in the projected space
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    prec_chol: np.ndarray = field(default_factory=lambda: np.zeros(0))
    covariance_type: str = "none"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.means.shape[0])

    # -- site-side assignment ------------------------------------------------------------------
    def embed(self, x: np.ndarray) -> np.ndarray:
        """Scaled and projected coordinates of the rows of ``x`` (columns in ``self.columns``)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ClusteringError(
                f"cluster model expects {len(self.columns)} feature columns, got shape {x.shape}"
            )
        z = scale_to_unit(x, self.scale_low, self.scale_high)
        if self.pca_components.size:
            z = (z - self.pca_mean) @ self.pca_components.T
        return z

    def log_likelihood(self, z: np.ndarray) -> np.ndarray:
        """(n, k) weighted log-likelihood of embedded points (gmm rule only)."""
        n, d = z.shape
        k = self.k
        prec, cov = self.prec_chol, self.covariance_type
        if cov == "tied":
            y = z @ prec
            mu = self.means @ prec
            sq = ((y[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
            logdet = np.log(np.diag(prec)).sum() * np.ones(k)
        elif cov == "full":
            sq = np.empty((n, k))
            for j in range(k):
                y = z @ prec[j] - self.means[j] @ prec[j]
                sq[:, j] = (y**2).sum(1)
            logdet = np.array([np.log(np.diag(prec[j])).sum() for j in range(k)])
        elif cov == "diag":
            sq = (((z[:, None, :] - self.means[None]) * prec[None]) ** 2).sum(-1)
            logdet = np.log(prec).sum(1)
        elif cov == "spherical":
            sq = ((z[:, None, :] - self.means[None]) ** 2).sum(-1) * prec[None, :] ** 2
            logdet = d * np.log(prec)
        else:
            raise ClusteringError(f"cluster model: unknown covariance_type {cov!r}")
        return -0.5 * (d * np.log(2 * np.pi) + sq) + logdet[None, :] + np.log(self.weights)[None]

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Cluster index (int64) of every row of ``x``. Runs at the site; nothing is sent."""
        z = self.embed(x)
        if self.rule == "gmm":
            return np.argmax(self.log_likelihood(z), axis=1).astype(np.int64)
        d2 = ((z[:, None, :] - self.means[None, :, :]) ** 2).sum(-1)
        return np.argmin(d2, axis=1).astype(np.int64)

    # -- export --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write ``model.npz`` (arrays) and ``model.json`` (metadata) into ``folder``."""
        import io

        folder = Path(folder)
        buf = io.BytesIO()
        # Typed as Any: mypy matches ``**`` against savez's ``allow_pickle: bool`` keyword too;
        # the names in _ARRAYS never collide with it.
        arrays: dict[str, Any] = {
            name: np.asarray(getattr(self, name), dtype=np.float64) for name in _ARRAYS
        }
        np.savez(buf, **arrays)
        atomic_write_bytes(folder / "model.npz", buf.getvalue())
        doc = {
            "format": MODEL_FORMAT,
            "rule": self.rule,
            "covariance_type": self.covariance_type,
            "k": self.k,
            "columns": list(self.columns),
            "meta": self.meta,
        }
        atomic_write_bytes(
            folder / "model.json", json.dumps(doc, indent=2, sort_keys=True).encode()
        )

    @classmethod
    def load(cls, folder: str | Path) -> ClusterModel:
        """Read a model written by :meth:`save` (no pickle: ``allow_pickle=False``)."""
        folder = Path(folder)
        try:
            doc = json.loads((folder / "model.json").read_text(encoding="utf-8"))
            with np.load(folder / "model.npz", allow_pickle=False) as npz:
                arrays = {name: np.array(npz[name]) for name in _ARRAYS}
        except (OSError, ValueError, KeyError) as exc:
            raise ClusteringError(
                f"{folder}: cannot read the cluster model (model.json + model.npz): {exc}"
            ) from exc
        if doc.get("format") != MODEL_FORMAT:
            raise ClusteringError(
                f"{folder / 'model.json'}: format {doc.get('format')!r}, expected {MODEL_FORMAT!r}"
            )
        if doc["rule"] not in ("gmm", "nearest-mean"):
            raise ClusteringError(f"{folder / 'model.json'}: unknown rule {doc['rule']!r}")
        return cls(
            columns=list(doc["columns"]),
            rule=doc["rule"],
            covariance_type=doc["covariance_type"],
            meta=dict(doc.get("meta", {})),
            **arrays,
        )
