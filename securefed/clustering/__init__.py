"""Server-side clustering of radiomic features: the paper's pipeline (scaling, PCA, GMM/k-means/
agglomerative, k selection), the exported model and site-side ``assign``, quality against
synthetic truth, plots, and the secure-aggregate roles (:mod:`securefed.clustering.secure`)."""

from securefed.clustering.io import FeatureTable, read_feature_table, read_truth, write_clusters_csv
from securefed.clustering.model import ClusterModel
from securefed.clustering.pipeline import RadiomicsClusterer
from securefed.clustering.quality import contingency, quality_report
from securefed.clustering.scaling import BoundsScaler, PercentileScaler

__all__ = [
    "BoundsScaler",
    "ClusterModel",
    "FeatureTable",
    "PercentileScaler",
    "RadiomicsClusterer",
    "contingency",
    "quality_report",
    "read_feature_table",
    "read_truth",
    "write_clusters_csv",
]
