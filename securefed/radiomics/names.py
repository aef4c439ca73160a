"""Stable feature column names: ``<modality>_<class>_<Feature>`` (e.g. ``flair_glcm_Contrast``).

The order is fixed: modalities in MODALITIES order (flair, t1, t1ce, t2), then the protocol's
feature classes in their declared order, then the feature names of each class in alphabetical
order. Deprecated pyradiomics features and the ``shape`` class are never included; with the six
classes of the paper this gives 93 names per modality and 372 per case.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from securefed.protocol.schema import FEATURE_CLASSES, MODALITIES

__all__ = ["FEATURE_CLASSES", "MODALITIES", "class_feature_names", "columns", "modality_columns"]


@cache
def class_feature_names(feature_class: str) -> tuple[str, ...]:
    """Non-deprecated pyradiomics feature names of one class, sorted (e.g. glcm: 24 names)."""
    if feature_class not in FEATURE_CLASSES:
        raise ValueError(
            f"unknown feature class {feature_class!r}; expected one of {', '.join(FEATURE_CLASSES)}"
        )
    from radiomics import getFeatureClasses

    names = getFeatureClasses()[feature_class].getFeatureNames()
    return tuple(sorted(name for name, deprecated in names.items() if not deprecated))


def modality_columns(modality: str, feature_classes: Sequence[str]) -> tuple[str, ...]:
    """Column names of one modality, e.g. ``flair_firstorder_Energy`` ... (93 for six classes)."""
    return tuple(
        f"{modality}_{cls}_{name}" for cls in feature_classes for name in class_feature_names(cls)
    )


def columns(feature_classes: Sequence[str] = FEATURE_CLASSES) -> tuple[str, ...]:
    """All column names of a case in the fixed order (372 for the paper's six classes)."""
    return tuple(c for m in MODALITIES for c in modality_columns(m, feature_classes))
