"""Guarded NIfTI reading: every nibabel/gzip/zlib failure becomes a CaseError naming case and file.

Only used at the site; nothing read here leaves it.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from securefed.errors import CaseError

__all__ = ["AFFINE_ATOL", "MAX_VOXELS", "Header", "check_voxels", "read_header", "read_voxels"]

AFFINE_ATOL = 1e-3
"""Largest difference (mm) tolerated between the affines of one case's files."""

MAX_VOXELS = 1 << 30
"""Headers claiming more voxels are refused before anything is decompressed."""


@dataclass(frozen=True)
class Header:
    """What the header says about one file (no voxel read)."""

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    zooms: tuple[float, float, float]
    dtype: np.dtype
    data_bytes: int  # bytes the voxel payload needs on disk (after the data offset)
    offset: int


def _fail(case: str, path: Path, what: str, exc: BaseException | None = None) -> CaseError:
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return CaseError(f"case {case}: {path.name}: {what}{detail}", case=case, path=path)


def _load(case: str, path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(path, mmap=False)
    except FileNotFoundError as exc:
        raise _fail(case, path, "file not found; restore it or remove the case", exc) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted file: any failure is this file's problem
        what = "unreadable NIfTI header; re-export or replace the file"
        raise _fail(case, path, what, exc) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise _fail(case, path, f"not a NIfTI image ({type(img).__name__}); convert it to NIfTI")
    return img


def read_header(case: str, path: Path) -> Header:
    """Read and sanity-check the header of ``path`` (3D, finite affine, positive spacing).

    Also detects a truncated file cheaply: a ``.nii`` shorter than its payload, or a ``.nii.gz``
    whose gzip trailer disagrees with the expected size and whose stream then fails to decompress.
    """
    img = _load(case, path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]) or min(shape[:3], default=0) < 1:
        raise _fail(case, path, f"expected a 3D volume, got shape {shape}; re-export it as 3D")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise _fail(case, path, f"implausibly large volume {shape} (> {MAX_VOXELS} voxels)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise _fail(case, path, "non-finite affine in the header; fix the qform/sform")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise _fail(case, path, f"invalid voxel spacing {zooms}; fix pixdim in the header")
    dtype = img.header.get_data_dtype()
    header = Header(
        path=path,
        shape=(shape[0], shape[1], shape[2]),
        affine=affine,
        zooms=(zooms[0], zooms[1], zooms[2]),
        dtype=dtype,
        data_bytes=int(np.prod(shape)) * dtype.itemsize,
        offset=int(getattr(img.dataobj, "offset", img.header.get_data_offset())),
    )
    _check_size(case, header)
    return header


def _check_size(case: str, header: Header) -> None:
    path = header.path
    expected = header.offset + header.data_bytes
    try:
        size = os.path.getsize(path)
        if path.name.endswith(".gz"):
            if size < 18:
                raise _fail(case, path, "truncated gzip file; copy it again from the source")
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                (isize,) = struct.unpack("<I", fh.read(4))
            if isize != expected % (1 << 32):
                # The trailer disagrees (truncation, or a multi-member gzip): decide by reading.
                read_voxels(case, path)
        elif size < expected:
            raise _fail(
                case,
                path,
                f"truncated file ({size} bytes, header needs {expected}); copy it again",
            )
    except OSError as exc:
        raise _fail(case, path, "unreadable file; check permissions and the disk", exc) from exc


def read_voxels(case: str, path: Path, dtype: type | None = None) -> np.ndarray:
    """All voxels of ``path`` as a 3D array (scaled by the header's slope/intercept); the gzip
    CRC is verified, so a corrupted or truncated payload raises CaseError."""
    img = _load(case, path)
    try:
        # Read the whole stream so that gzip verifies its CRC and length: nibabel alone stops
        # after the voxel bytes and would accept a corrupted payload.
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            raw = fh.read()
        data = np.asanyarray(type(img).from_bytes(raw).dataobj)
        del raw
    except Exception as exc:  # noqa: BLE001 - gzip/zlib/EOF/short read from an untrusted file
        raise _fail(
            case, path, "truncated or corrupt voxel data; copy the file again from the source", exc
        ) from exc
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    return data if dtype is None else data.astype(dtype, copy=False)


def _acc(data: np.ndarray) -> type:
    return np.complex128 if data.dtype.kind == "c" else np.float64


def check_voxels(case: str, path: Path, data: np.ndarray, *, is_seg: bool) -> None:
    """Raise CaseError for non-finite voxels, and for a label map outside {0, 1, 2, 4}."""
    # Fast path: a float64 sum is finite when every voxel is; only then skip the exact scan.
    if data.dtype.kind in "fc" and not np.isfinite(np.sum(data, dtype=_acc(data))):
        bad = ~np.isfinite(data)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise _fail(
                case,
                path,
                f"{int(bad.sum())} non-finite voxels (NaN/inf), first at {where}; "
                "fix or remove the case",
            )
    if not is_seg:
        return
    if data.dtype.kind in "fc" and not np.array_equal(data, np.round(data)):
        raise _fail(case, path, "non-integer label values; labels must be 0, 1, 2 or 4")
    if data.dtype.kind == "b":
        return
    lo, hi = data.min(), data.max()
    if lo >= 0 and hi <= 4:
        bad_values = [3] if (data == 3).any() else []
    else:
        bad_values = [v for v in np.unique(data).tolist() if v not in (0, 1, 2, 4)]
    if bad_values:
        shown = ", ".join(str(int(v)) for v in bad_values[:8])
        raise _fail(
            case,
            path,
            f"labels {{{shown}}} outside {{0, 1, 2, 4}}; fix the segmentation "
            "(BraTS 2023 files use 3 for enhancing tumour: map 3 -> 4)",
        )
