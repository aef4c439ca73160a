"""Grey-level binning: pyradiomics' per-image fixed bin width, or shared bin edges per modality.

pyradiomics 3.1 has no ``binEdges`` setting: ``radiomics.imageoperations.getBinEdges`` offers a
fixed bin width (edges at multiples of the width, starting at the ROI minimum, so grey level 1 is
always the ROI's lowest bin) or a fixed bin count. The paper's code obtains shared edges by
replacing that function with one that uses the dataset-wide minimum and maximum of each modality.
We do the same, but keyword-gated and reversible: :func:`install_hook` wraps ``getBinEdges`` so
that an extraction whose settings carry ``securefedBinEdges`` uses exactly those edges, and every
other call is passed unchanged to pyradiomics' own function.

Shared edges of a modality, given the bin width W and the minimum/maximum of the normalised
intensities inside the masks of all the site's cases (the paper's formula)::

    low = min - (min mod W);  edges = arange(low, max + 2 W, W)

The minimum and maximum are site-local statistics: they stay at the site, but every released
feature of every case then depends on the site's extreme voxels (see docs/radiomics.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "EDGES_SETTING",
    "IntensityRange",
    "edges_settings",
    "install_hook",
    "roi_range",
    "shared_edges",
]

EDGES_SETTING = "securefedBinEdges"

IntensityRange = tuple[float, float]


def roi_range(values: np.ndarray) -> IntensityRange:
    """(min, max) of the normalised intensities inside a mask (a site-local statistic)."""
    return float(values.min()), float(values.max())


def shared_edges(ranges: Iterable[IntensityRange], bin_width: float) -> tuple[float, ...]:
    """Shared bin edges of one modality from the per-case (min, max) ranges (paper's formula)."""
    pairs = list(ranges)
    if not pairs:
        raise ValueError("shared bin edges need at least one case")
    lo = min(p[0] for p in pairs)
    hi = max(p[1] for p in pairs)
    low = lo - (lo % bin_width)
    edges = np.arange(low, hi + 2 * bin_width, bin_width)
    return tuple(float(e) for e in edges)


def _make_wrapper(original: Any) -> Any:
    def getBinEdges(parameterValues: Any, **kwargs: Any) -> Any:  # noqa: N802,N803 - pyradiomics API
        edges = kwargs.get(EDGES_SETTING)
        if edges is None:
            return original(parameterValues, **kwargs)
        return np.asarray(edges, dtype=np.float64)

    getBinEdges.__securefed_original__ = original  # type: ignore[attr-defined]
    return getBinEdges


def install_hook() -> None:
    """Make pyradiomics honour the ``securefedBinEdges`` setting (idempotent, per process).

    Calls without that setting are unaffected (they reach pyradiomics' own ``getBinEdges``)."""
    from radiomics import imageoperations

    current = imageoperations.getBinEdges
    if getattr(current, "__securefed_original__", None) is None:
        imageoperations.getBinEdges = _make_wrapper(current)


def edges_settings(edges: tuple[float, ...] | None) -> Mapping[str, Any]:
    """Extra pyradiomics settings for a modality: the shared edges, or nothing (per-image)."""
    return {} if edges is None else {EDGES_SETTING: tuple(edges)}
