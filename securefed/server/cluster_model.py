"""Server role, clustering stage: fit the paper's pipeline on the collected (released) features
and seal the fitted model to each site.

This is the one clustering implementation: ``securefed cluster`` and the study's clustering stage
both call :func:`fit_cluster_model`. Fitting uses train and val cases only; with
``clustering.scaling = "declared-bounds"`` the scaler takes the declared bounds *of the released
columns* (after the protocol's subset or projection), never bounds of raw columns.

What leaves the server: the sealed model (see :mod:`securefed.clustering.exchange`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from securefed.clustering.exchange import seal_cluster_model
from securefed.clustering.model import ClusterModel
from securefed.clustering.pipeline import RadiomicsClusterer
from securefed.crypto import PrivateKeys, PublicKeys
from securefed.errors import ClusteringError
from securefed.privacy.protection import released_bounds
from securefed.protocol import LoadedProtocol
from securefed.radiomics.table import FeatureTable
from securefed.transport import SendCounter

__all__ = ["FittedClustering", "fit_cluster_model", "seal_for_sites"]


@dataclass(frozen=True)
class FittedClustering:
    """The fitted model and how k was chosen (server-side; only the model is sent)."""

    model: ClusterModel
    k_selection: str
    k_scores: dict[int, float] = field(default_factory=dict)
    fit_cases: int = 0

    def summary(self) -> dict[str, object]:
        """The JSON summary shared by ``securefed cluster`` (quality.json) and the study
        (clustering.json)."""
        return {
            "k": self.model.k,
            "k_selection": self.k_selection,
            "selection": {
                "criterion": self.k_selection,
                "scores": {str(k): v for k, v in self.k_scores.items()},
            },
            "fit_cases": self.fit_cases,
        }


def fit_cluster_model(table: FeatureTable, loaded: LoadedProtocol) -> FittedClustering:
    """Fit the protocol's clustering (plain or local-dp release) on the train+val rows of the
    collected ``table``."""
    proto = loaded.protocol
    if proto.release.mode == "secure-aggregate":
        raise ClusteringError(
            "release.mode = 'secure-aggregate': no per-case vector reaches the server; the "
            "clustering runs as the federated DP protocol (securefed.study.secure_clustering)"
        )
    lower = upper = None
    if proto.clustering.scaling == "declared-bounds":
        bounds = released_bounds(loaded).select(table.columns, "release.bounds")
        lower, upper = bounds.lower, bounds.upper
    fit = table.fit_mask
    fit_rows = int(fit.sum())
    if fit_rows < 2:
        raise ClusteringError(f"only {fit_rows} train/val case(s) were collected: cannot cluster")
    est = RadiomicsClusterer.from_spec(proto.clustering, lower, upper)
    est.fit(table.values[fit])
    model: ClusterModel = est.model_
    model.columns = list(table.columns)
    model.meta["protocol"] = loaded.sha256
    scores = {int(k): float(v) for k, v in est.k_scores_.items()}
    return FittedClustering(model, proto.clustering.k_selection, scores, fit_rows)


def seal_for_sites(
    model: ClusterModel,
    *,
    server_keys: PrivateKeys,
    sites: Mapping[str, PublicKeys],
    loaded: LoadedProtocol,
    counters: SendCounter,
) -> dict[str, bytes]:
    """One sealed envelope of ``model`` per site id (same content, each to its own key)."""
    return {
        site_id: seal_cluster_model(
            model, server_keys=server_keys, site=public, loaded=loaded, counters=counters
        )
        for site_id, public in sites.items()
    }
