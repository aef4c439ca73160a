"""FeTS2022 / BraTS data layer: case discovery, partition files, splits, validation, loading.

Everything here runs at a site and handles raw data; nothing from this package leaves the site.
The synthetic federation generator lives in :mod:`securefed.data.synth`.
"""

from securefed.data.cases import (
    LABELS,
    MODALITIES,
    REGIONS,
    CaseFiles,
    CaseProblem,
    Discovery,
    discover_cases,
)
from securefed.data.federation import UNPARTITIONED, Federation, load_federation, summary_line
from securefed.data.partitions import (
    PARTITION_COLUMNS,
    PATIENT_COLUMN,
    read_partitioning,
    read_patients,
    resolve_partitioning,
)
from securefed.data.splits import SPLITS, Split, split_cases, split_sizes
from securefed.data.validate import CheckLevel, CheckResult, check_case, check_cases
from securefed.data.volumes import CaseVolumes, load_case

__all__ = [
    "LABELS",
    "MODALITIES",
    "PARTITION_COLUMNS",
    "PATIENT_COLUMN",
    "REGIONS",
    "SPLITS",
    "UNPARTITIONED",
    "CaseFiles",
    "CaseProblem",
    "CaseVolumes",
    "CheckLevel",
    "CheckResult",
    "Discovery",
    "Federation",
    "Split",
    "check_case",
    "check_cases",
    "discover_cases",
    "load_case",
    "load_federation",
    "read_partitioning",
    "read_patients",
    "resolve_partitioning",
    "split_cases",
    "split_sizes",
    "summary_line",
]
