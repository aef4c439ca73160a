"""Site-side preprocessing of cases for segmentation, cached in memory across rounds.

Deterministic part (cached): optional resampling to ``spec.spacing_mm`` (MONAI Spacingd), crop to
the brain's bounding box (CropForegroundd), channel-wise z-score over brain voxels
(NormalizeIntensityd nonzero, channel_wise) and labels to TC/WT/ET channels
(ConvertToMultiChannelBasedOnBratsClassesd). Random part (per step): pad to the crop, crop
sampling from ``spec.crop_sampling`` and optional flips/intensity augmentation.

Raw data: everything here stays at the site; the prepared dicts must never be sent anywhere.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from securefed.errors import CaseError

if TYPE_CHECKING:
    from securefed.data import CaseFiles, CaseVolumes
    from securefed.protocol.schema import TrainingSpec

__all__ = [
    "CACHE_ENV",
    "clear_cache",
    "prepare_cases",
    "prepare_volumes",
    "train_transform",
]

CACHE_ENV = "SECUREFED_CASE_CACHE_MB"
_DEFAULT_CACHE_MB = 4096
_cache: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
_cache_bytes = 0
_lock = threading.Lock()


def _nbytes(item: dict[str, Any]) -> int:
    total = item["image"].numel() * item["image"].element_size()
    total += sum(item[k].nbytes for k in ("fg_indices", "bg_indices") if k in item)
    if item["label"] is not None:
        total += item["label"].numel() * item["label"].element_size()
    return int(total)


def clear_cache() -> None:
    """Forget every cached prepared case."""
    global _cache_bytes
    with _lock:
        _cache.clear()
        _cache_bytes = 0


def _cache_limit() -> int:
    try:
        return int(float(os.environ.get(CACHE_ENV, _DEFAULT_CACHE_MB)) * 2**20)
    except ValueError:
        return _DEFAULT_CACHE_MB * 2**20


def _cache_put(key: tuple[Any, ...], item: dict[str, Any]) -> None:
    global _cache_bytes
    size = _nbytes(item)
    limit = _cache_limit()
    if size > limit:
        return
    with _lock:
        if key in _cache:
            return
        while _cache and _cache_bytes + size > limit:
            _, old = _cache.popitem(last=False)
            _cache_bytes -= _nbytes(old)
        _cache[key] = item
        _cache_bytes += size


def _cache_get(key: tuple[Any, ...]) -> dict[str, Any] | None:
    with _lock:
        item = _cache.get(key)
        if item is not None:
            _cache.move_to_end(key)
        return item


def _preprocess(
    volumes: CaseVolumes, spacing_mm: float | None, crop: tuple[int, ...] | None
) -> dict[str, Any]:
    from monai.data import MetaTensor
    from monai.transforms import (
        ConvertToMultiChannelBasedOnBratsClassesd,
        CropForegroundd,
        NormalizeIntensityd,
        Spacingd,
        SpatialPadd,
    )
    from monai.transforms.utils import map_binary_to_indices

    image = np.asarray(volumes.image, dtype=np.float32)
    if image.ndim != 4 or image.shape[0] != 4:
        raise CaseError(
            f"case {volumes.subject_id}: image has shape {image.shape}, expected (4, X, Y, Z) "
            "(flair, t1, t1ce, t2)",
            case=volumes.subject_id,
        )
    affine = torch.as_tensor(np.asarray(volumes.affine, dtype=np.float64))
    data: dict[Hashable, Any] = {"image": MetaTensor(torch.from_numpy(image.copy()), affine=affine)}
    keys = ["image"]
    if volumes.label is not None:
        label = np.asarray(volumes.label)
        if label.shape != image.shape[1:]:
            raise CaseError(
                f"case {volumes.subject_id}: label shape {label.shape} differs from image "
                f"{image.shape[1:]}",
                case=volumes.subject_id,
            )
        data["label"] = MetaTensor(torch.from_numpy(label.astype(np.uint8)[None]), affine=affine)
        keys.append("label")
    spacing = tuple(float(s) for s in volumes.spacing)
    if spacing_mm is not None and any(abs(s - spacing_mm) > 1e-3 for s in spacing):
        modes = ("bilinear", "nearest")[: len(keys)]
        data = Spacingd(keys=keys, pixdim=(spacing_mm,) * 3, mode=modes)(data)
        spacing = (float(spacing_mm),) * 3
    data = CropForegroundd(keys=keys, source_key="image", margin=2, allow_smaller=True)(data)
    # NormalizeIntensityd is typed ndarray | Tensor; MetaTensors in give MetaTensors out.
    data = cast(
        "dict[Hashable, Any]",
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)(data),
    )
    if crop is not None:
        data = SpatialPadd(keys=keys, spatial_size=crop)(data)
    out: dict[str, Any] = {
        "subject_id": volumes.subject_id,
        "image": torch.as_tensor(data["image"])
        .as_subclass(torch.Tensor)
        .float()
        .contiguous()
        .clone(),
        "label": None,
        "spacing": spacing,
    }
    if "label" in data:
        lab = ConvertToMultiChannelBasedOnBratsClassesd(keys="label")(
            {"label": torch.as_tensor(data["label"]).round().to(torch.uint8)}
        )["label"]
        out["label"] = torch.as_tensor(lab).as_subclass(torch.Tensor).to(torch.uint8).contiguous()
        fg, bg = map_binary_to_indices(out["label"].any(0, keepdim=True), None)
        out["fg_indices"] = np.asarray(fg, dtype=np.int32)
        out["bg_indices"] = np.asarray(bg, dtype=np.int32)
    return out


def prepare_volumes(volumes: Iterable[CaseVolumes], spec: TrainingSpec) -> list[dict[str, Any]]:
    """Preprocess loaded cases (not cached). Each dict: ``subject_id``; ``image`` float32 tensor
    (4, X, Y, Z); ``label`` uint8 tensor (3, X, Y, Z) with channels TC, WT, ET, or None;
    ``spacing`` (mm, after resampling); for labelled cases ``fg_indices``/``bg_indices``
    (int32 flat indices of tumour / other voxels, for tumour-centred crops). Volumes smaller than
    ``spec.crop_size`` are zero-padded to it."""
    return [_preprocess(v, *_prep_settings(spec)) for v in volumes]


def _prep_settings(spec: TrainingSpec) -> tuple[float | None, tuple[int, ...] | None]:
    crop = getattr(spec, "crop_size", None)
    return getattr(spec, "spacing_mm", None), None if crop is None else tuple(int(c) for c in crop)


def _file_key(case: CaseFiles) -> tuple[Any, ...]:
    parts: list[Any] = [case.subject_id]
    for key, path in sorted(case.files().items()):
        try:
            st = os.stat(path)
        except OSError as exc:
            raise CaseError(
                f"case {case.subject_id}: cannot read {path} ({exc.strerror}); check the data "
                "folder",
                case=case.subject_id,
                path=path,
            ) from exc
        parts.append((key, str(path), st.st_mtime_ns, st.st_size))
    return tuple(parts)


def prepare_cases(cases: Sequence[CaseFiles], spec: TrainingSpec) -> list[dict[str, Any]]:
    """Load (securefed.data.load_case) and preprocess ``cases`` for ``spec`` (a TrainingSpec),
    reusing the in-memory cache (keyed by files, their mtimes and the spacing; bounded by the
    ``SECUREFED_CASE_CACHE_MB`` environment variable, default 4096). Raises CaseError naming a
    case that cannot be loaded. See :func:`prepare_volumes` for the dict layout."""
    from securefed.data import load_case

    settings = _prep_settings(spec)
    out: list[dict[str, Any]] = []
    for case in cases:
        key = (_file_key(case), settings)
        item = _cache_get(key)
        if item is None:
            item = _preprocess(load_case(case), *settings)
            _cache_put(key, item)
        out.append(item)
    return out


def train_transform(spec: TrainingSpec, seed: int) -> Any:
    """The random per-step pipeline (MONAI Compose, seeded): pad to the crop size, crop
    (``random``: RandSpatialCropd; ``tumour-centred``: RandCropByPosNegLabeld with positive
    fraction ``spec.tumour_crop_fraction``), then optional flips and intensity jitter."""
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        SpatialPadd,
    )

    crop = tuple(int(c) for c in spec.crop_size)
    keys = ["image", "label"]
    steps: list[Any] = [SpatialPadd(keys=keys, spatial_size=crop)]
    if spec.crop_sampling == "tumour-centred":
        # Uses the precomputed fg/bg indices of the cached case when present.
        frac = float(spec.tumour_crop_fraction)
        steps.append(
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=crop,
                pos=frac,
                neg=1.0 - frac,
                num_samples=1,
                fg_indices_key="fg_indices",
                bg_indices_key="bg_indices",
                allow_smaller=True,
            )
        )
    else:
        steps.append(RandSpatialCropd(keys=keys, roi_size=crop, random_size=False))
    if getattr(spec, "augmentation", False):
        steps += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)]
        steps += [
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    compose = Compose(steps, lazy=False)
    compose.set_random_state(seed=seed % (2**32))
    return compose
