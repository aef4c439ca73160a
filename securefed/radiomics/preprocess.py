"""The paper's preprocessing of one case, before pyradiomics.

1. Crop to the foreground: the bounding box of the voxels where any of the four channels is nonzero.
2. Brain mask = FLAIR > 0 inside that box, computed on the raw FLAIR before z-scoring, and used for
   all four modalities. With ``mask = "brain-without-tumour"`` the voxels labelled 1, 2 or 4 in the
   segmentation are removed from it (the segmentation is then required).
3. Z-score each channel in float64 (population standard deviation): over the whole cropped box,
   background included (``normalisation = "crop-box"``, the paper), or over the brain voxels only
   (``normalisation = "brain"``: FLAIR > 0, tumour included); the whole box is transformed.

Nothing here leaves the site: the outputs are raw per-case arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from securefed.errors import CaseError, FeatureError
from securefed.protocol.schema import MODALITIES

__all__ = ["Preprocessed", "foreground_box", "preprocess"]


@dataclass(frozen=True, repr=False, eq=False)
class Preprocessed:
    """A cropped, z-scored case: ``image`` float64 (4, x, y, z) in MODALITIES order, ``mask`` bool
    (x, y, z), ``box`` the crop as (start, stop) per axis of the original volume."""

    image: np.ndarray
    mask: np.ndarray
    box: tuple[tuple[int, int], ...]

    def __repr__(self) -> str:  # never print voxel values
        return f"Preprocessed(shape={self.image.shape}, mask_voxels={int(self.mask.sum())})"


def foreground_box(image: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """(start, stop) per axis of the voxels nonzero in any channel; None if there are none."""
    fg = np.any(image != 0, axis=0)
    box = []
    for axis in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != axis)
        hit = np.flatnonzero(np.any(fg, axis=other))
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def preprocess(
    image: np.ndarray,
    label: np.ndarray | None,
    *,
    subject_id: str,
    mask: Literal["brain", "brain-without-tumour"] = "brain",
    normalisation: Literal["crop-box", "brain"] = "crop-box",
) -> Preprocessed:
    """Crop, build the brain mask and z-score one case (see the module docstring).

    ``image`` is (4, X, Y, Z) in flair, t1, t1ce, t2 order; ``label`` (X, Y, Z) or None.
    Raises CaseError when the input is unusable and FeatureError when a channel is constant.
    """
    if image.ndim != 4 or image.shape[0] != len(MODALITIES):
        raise CaseError(
            f"case {subject_id}: expected an image of shape (4, X, Y, Z), got {image.shape}",
            case=subject_id,
        )
    if not np.all(np.isfinite(image)):
        raise CaseError(f"case {subject_id}: the image has non-finite voxels", case=subject_id)
    box = foreground_box(image)
    if box is None:
        raise CaseError(
            f"case {subject_id}: every voxel of every modality is zero (no foreground)",
            case=subject_id,
        )
    sl = tuple(slice(a, b) for a, b in box)
    cropped = np.asarray(image[(slice(None), *sl)], dtype=np.float64)
    head = cropped[0] > 0  # FLAIR > 0, before z-scoring
    brain = head.copy()
    if mask == "brain-without-tumour":
        if label is None:
            raise CaseError(
                f"case {subject_id}: mask 'brain-without-tumour' needs the segmentation (seg) "
                "file; provide it or use radiomics.mask = 'brain'",
                case=subject_id,
            )
        if label.shape != image.shape[1:]:
            raise CaseError(
                f"case {subject_id}: seg shape {label.shape} differs from image {image.shape[1:]}",
                case=subject_id,
            )
        brain &= np.asarray(label[sl]) == 0
    if not brain.any():
        raise CaseError(
            f"case {subject_id}: the {mask} mask is empty (no FLAIR voxel > 0)", case=subject_id
        )
    out = np.empty_like(cropped)
    for c, modality in enumerate(MODALITIES):
        channel = cropped[c]
        ref = channel if normalisation == "crop-box" else channel[head]
        mean = float(ref.mean())
        std = float(ref.std())
        if not np.isfinite(std) or std <= 0:
            raise FeatureError(
                f"case {subject_id}, modality {modality}: constant intensities over the "
                f"{normalisation} region; the z-score is undefined (check the image file)"
            )
        np.subtract(channel, mean, out=out[c])
        out[c] /= std
    return Preprocessed(image=out, mask=brain, box=box)
