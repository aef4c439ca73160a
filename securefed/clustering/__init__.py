"""Server-side clustering of radiomic features: the paper's pipeline (scaling, PCA, GMM/k-means/
agglomerative, k selection), the exported model and its sealed exchange, site-side ``assign``,
clusters.csv, quality against synthetic truth, plots, and the secure-aggregate roles
(:mod:`securefed.clustering.secure`)."""

from securefed.clustering.assignments import Assignment, read_assignments, write_assignments
from securefed.clustering.io import read_feature_table, read_truth
from securefed.clustering.model import ClusterModel
from securefed.clustering.pipeline import RadiomicsClusterer
from securefed.clustering.quality import contingency, quality_report
from securefed.clustering.scaling import BoundsScaler, PercentileScaler

__all__ = [
    "Assignment",
    "BoundsScaler",
    "ClusterModel",
    "PercentileScaler",
    "RadiomicsClusterer",
    "contingency",
    "quality_report",
    "read_assignments",
    "read_feature_table",
    "read_truth",
    "write_assignments",
]
