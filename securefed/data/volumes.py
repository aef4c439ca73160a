"""Loading one case into memory: :class:`CaseVolumes` and :func:`load_case`.

CaseVolumes holds raw site data. It never leaves the site: its repr shows shapes only and it
refuses to be pickled or copied into a serialised form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from securefed.data.cases import MODALITIES, CaseFiles
from securefed.data.nifti import AFFINE_ATOL, Header, check_voxels, read_header, read_voxels
from securefed.errors import CaseError, DataError

__all__ = ["CaseVolumes", "check_geometry", "load_case"]


@dataclass(frozen=True, eq=False, repr=False)
class CaseVolumes:
    """One case in memory. ``image``: float32 (4, X, Y, Z) in flair, t1, t1ce, t2 order;
    ``label``: uint8 (X, Y, Z) with values in {0, 1, 2, 4}, or None without a seg file;
    ``affine`` (4, 4) and ``spacing`` (mm) from the flair header. Raw data: stays at the site."""

    subject_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]

    def __repr__(self) -> str:
        label = "None" if self.label is None else f"uint8{tuple(self.label.shape)}"
        return (
            f"CaseVolumes({self.subject_id}, image=float32{tuple(self.image.shape)}, "
            f"label={label}, spacing={self.spacing})"
        )

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise DataError(
            f"case {self.subject_id}: raw volumes must not be serialised (they never leave the "
            "site); pass CaseFiles paths to other processes instead"
        )


def check_geometry(case: CaseFiles) -> dict[str, Header]:
    """Headers of every file of ``case`` (key -> Header), checked for equal shape and affine with
    flair as the reference; raises CaseError naming the case and the differing file."""
    headers = {key: read_header(case.subject_id, path) for key, path in case.files().items()}
    ref = headers["flair"]
    for key, hdr in headers.items():
        if key == "flair":
            continue
        if hdr.shape != ref.shape:
            raise CaseError(
                f"case {case.subject_id}: {hdr.path.name}: shape {hdr.shape} differs from flair "
                f"{ref.shape}; all modalities and the seg must be co-registered on one grid",
                case=case.subject_id,
                path=hdr.path,
            )
        diff = float(np.max(np.abs(hdr.affine - ref.affine)))
        if diff > AFFINE_ATOL:
            raise CaseError(
                f"case {case.subject_id}: {hdr.path.name}: affine differs from flair by {diff:.4g} "
                f"(tolerance {AFFINE_ATOL} mm); resample or fix the header so that all files share "
                "one grid",
                case=case.subject_id,
                path=hdr.path,
            )
    return headers


def load_case(case: CaseFiles) -> CaseVolumes:
    """Read and validate every file of ``case``; raise CaseError naming the case and the file
    (missing/unreadable/truncated file, shape or affine mismatch, non-finite voxels, labels
    outside {0, 1, 2, 4})."""
    headers = check_geometry(case)
    ref = headers["flair"]
    image = np.empty((len(MODALITIES), *ref.shape), dtype=np.float32)
    for i, modality in enumerate(MODALITIES):
        path = case.images[modality]
        image[i] = read_voxels(case.subject_id, path)
        check_voxels(case.subject_id, path, image[i], is_seg=False)
    label = None
    if case.seg is not None:
        seg = read_voxels(case.subject_id, case.seg)
        check_voxels(case.subject_id, case.seg, seg, is_seg=True)
        label = seg.astype(np.uint8)
    return CaseVolumes(
        subject_id=case.subject_id,
        image=image,
        label=label,
        affine=ref.affine.copy(),
        spacing=ref.zooms,
    )
