"""The pyradiomics adapter: preprocessed arrays in, a named float64 feature vector out.

pyradiomics runs on in-memory SimpleITK images (no temporary files) with the original image type
only, ``binWidth`` from the protocol, the protocol's feature classes (never ``shape``) and
``additionalInfo`` off, so no diagnostics (hashes, paths, intensity statistics) are produced at
all. Its logger is silenced; any failed, NaN or infinite feature raises FeatureError naming the
case, the modality and the feature. Nothing here leaves the site: the vectors are raw features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np

from securefed.errors import FeatureError
from securefed.protocol.schema import MODALITIES, RadiomicsSpec
from securefed.radiomics import binning
from securefed.radiomics.names import class_feature_names
from securefed.radiomics.preprocess import Preprocessed

__all__ = [
    "extract_modality",
    "extract_preprocessed",
    "extractor_settings",
    "make_extractor",
    "to_sitk",
]


def extractor_settings(bin_width: float) -> dict[str, Any]:
    """The pyradiomics settings we pass (everything else stays at pyradiomics' defaults)."""
    return {"binWidth": float(bin_width), "additionalInfo": False, "label": 1}


def _quiet_radiomics() -> logging.Logger:
    import radiomics

    radiomics.setVerbosity(logging.CRITICAL + 10)  # no console output from pyradiomics
    logger = logging.getLogger("radiomics")
    logger.setLevel(logging.ERROR)  # keep feature errors for our messages
    logger.propagate = False
    return logger


@lru_cache(maxsize=32)
def make_extractor(
    feature_classes: tuple[str, ...], bin_width: float, edges: tuple[float, ...] | None = None
) -> Any:
    """A RadiomicsFeatureExtractor on the original image with exactly ``feature_classes``.

    With ``edges``, grey levels are binned with those shared edges (see binning.py)."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    _quiet_radiomics()
    binning.install_hook()
    extractor = RadiomicsFeatureExtractor(
        **extractor_settings(bin_width), **binning.edges_settings(edges)
    )
    extractor.disableAllImageTypes()
    extractor.enableImageTypeByName("Original")
    extractor.disableAllFeatures()
    for cls in feature_classes:
        extractor.enableFeatureClassByName(cls)
    return extractor


def to_sitk(array: np.ndarray, spacing: Sequence[float]) -> Any:
    """A SimpleITK image of an (x, y, z) array with the given voxel spacing in mm."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).T))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.messages.append(text)


@contextmanager
def _collect_errors() -> Iterator[_Collect]:
    logger = _quiet_radiomics()
    handler = _Collect()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def extract_modality(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    *,
    spec: RadiomicsSpec,
    subject_id: str,
    modality: str,
    edges: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Features of one modality (x, y, z) inside ``mask``, in ``modality_columns`` order."""
    classes = tuple(spec.feature_classes)
    where = f"case {subject_id}, modality {modality}"
    roi = image[mask]
    if roi.size == 0:
        raise FeatureError(f"{where}, all features: the mask is empty")
    if not np.all(np.isfinite(roi)):
        raise FeatureError(f"{where}, all features: non-finite intensities inside the mask")
    if edges is not None:
        lo, hi = float(roi.min()), float(roi.max())
        if lo < edges[0] or hi >= edges[-1]:
            raise FeatureError(
                f"{where}: intensities [{lo:.4g}, {hi:.4g}] fall outside the shared bin edges "
                f"[{edges[0]:.4g}, {edges[-1]:.4g}); extract all of the site's cases together"
            )
    extractor = make_extractor(classes, float(spec.bin_width), edges)
    with _collect_errors() as errors:
        try:
            result = extractor.execute(
                to_sitk(image, spacing), to_sitk(mask.astype(np.uint8), spacing)
            )
        except Exception as exc:  # noqa: BLE001 - any pyradiomics failure becomes a FeatureError
            raise FeatureError(
                f"{where}, all features: pyradiomics failed ({type(exc).__name__}: {exc})"
            ) from exc
    out = np.empty(sum(len(class_feature_names(c)) for c in classes), dtype=np.float64)
    i = 0
    for cls in classes:
        for name in class_feature_names(cls):
            key = f"original_{cls}_{name}"
            if key not in result:
                raise FeatureError(f"{where}, feature {cls}_{name}: not computed by pyradiomics")
            try:
                value = float(result[key])
            except (TypeError, ValueError) as exc:
                raise FeatureError(f"{where}, feature {cls}_{name}: not a number") from exc
            if not np.isfinite(value):
                detail = next((m for m in errors.messages if name in m), None)
                raise FeatureError(
                    f"{where}, feature {cls}_{name}: value is {value}"
                    + (f" ({detail})" if detail else "")
                    + "; check the image and mask of this case"
                )
            out[i] = value
            i += 1
    return out


def extract_preprocessed(
    pre: Preprocessed,
    spacing: Sequence[float],
    *,
    spec: RadiomicsSpec,
    subject_id: str,
    edges: Mapping[str, tuple[float, ...]] | None = None,
) -> np.ndarray:
    """The case's feature vector: the four modalities concatenated (flair, t1, t1ce, t2)."""
    parts = [
        extract_modality(
            pre.image[c],
            pre.mask,
            spacing,
            spec=spec,
            subject_id=subject_id,
            modality=m,
            edges=None if edges is None else edges[m],
        )
        for c, m in enumerate(MODALITIES)
    ]
    return np.concatenate(parts)
