"""Tiny NIfTI federations for the data-layer tests (12x12x10 voxels per file)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (12, 12, 10)
MODS = ("flair", "t1", "t1ce", "t2")


def affine() -> np.ndarray:
    a = np.diag([-1.0, -1.0, 1.0, 1.0])
    a[:3, 3] = [5.0, 5.0, -4.0]
    return a


def make_case(
    root: Path,
    subject: str,
    *,
    seed: int = 0,
    seg: bool = True,
    suffix: str = ".nii.gz",
    modalities: Sequence[str] = MODS,
) -> Path:
    """Write one case folder with four float32 modalities and a {0,1,2,4} label map."""
    rng = np.random.default_rng(seed)
    folder = root / subject
    folder.mkdir(parents=True, exist_ok=True)
    for m in modalities:
        data = rng.random(SHAPE).astype(np.float32) * 100
        nib.save(nib.Nifti1Image(data, affine()), folder / f"{subject}_{m}{suffix}")
    if seg:
        lab = np.zeros(SHAPE, np.uint8)
        lab[3:9, 3:9, 3:7] = 2
        lab[4:8, 4:8, 4:6] = 4
        lab[5:7, 5:7, 4:6] = 1
        nib.save(nib.Nifti1Image(lab, affine()), folder / f"{subject}_seg{suffix}")
    return folder


def write_partitioning(root: Path, partition_of: Mapping[str, int], name: str = "partitioning_1"):
    lines = ["Partition_ID,Subject_ID"] + [f"{p},{s}" for s, p in partition_of.items()]
    path = root / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_federation(root: Path, sizes: Sequence[int], prefix: str = "FeTS2022") -> dict[str, int]:
    """Cases for partitions 1..len(sizes) plus partitioning_1.csv; returns subject -> partition."""
    root.mkdir(parents=True, exist_ok=True)
    partition_of: dict[str, int] = {}
    k = 0
    for pid, n in enumerate(sizes, start=1):
        for _ in range(n):
            k += 1
            subject = f"{prefix}_{k:05d}"
            make_case(root, subject, seed=k)
            partition_of[subject] = pid
    write_partitioning(root, partition_of)
    return partition_of


def rewrite(path: Path, data: np.ndarray, aff: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, affine() if aff is None else aff), path)
