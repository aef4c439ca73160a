"""Small synthetic volumes for the radiomics tests (not a test module itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

SHAPE = (40, 40, 30)


def volume(seed: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(4, X, Y, Z) float32 smooth random 'brain' (zero outside an ellipsoid, padded by a zero
    margin) and a uint8 label with a tumour (labels 1, 2, 4) inside it."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    cx, cy, cz = (s / 2 for s in shape)
    brain = ((x - cx) / 15) ** 2 + ((y - cy) / 14) ** 2 + ((z - cz) / 11) ** 2 < 1
    img = np.empty((4, *shape), dtype=np.float32)
    for c in range(4):
        smooth = gaussian_filter(rng.normal(size=shape), 1.2 + 0.3 * c)
        img[c] = 100 + 40 * c + 300 * smooth + 5 * rng.normal(size=shape)
    r = ((x - cx - 4) ** 2 + (y - cy + 3) ** 2 + (z - cz) ** 2) ** 0.5
    label = np.zeros(shape, dtype=np.uint8)
    label[(r < 7) & brain] = 2
    label[(r < 4.5) & brain] = 4
    label[(r < 2.5) & brain] = 1
    img[0][label == 2] += 150
    img[:, ~brain] = 0
    img[0][brain & (img[0] <= 0)] = 1.0  # FLAIR > 0 everywhere inside the brain
    return img, label


def write_case(root: Path, subject_id: str, seed: int) -> Path:
    """Write a FeTS2022-layout case folder with tiny NIfTI files; returns the folder."""
    import nibabel as nib

    img, label = volume(seed)
    folder = root / subject_id
    folder.mkdir(parents=True)
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    for c, m in enumerate(("flair", "t1", "t1ce", "t2")):
        nib.save(nib.Nifti1Image(img[c], affine), folder / f"{subject_id}_{m}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / f"{subject_id}_seg.nii.gz")
    return folder


def write_federation(root: Path, partitions: dict[str, int], seed0: int = 0) -> Path:
    """Write cases and ``partitioning_1.csv`` (Partition_ID,Subject_ID) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i, subject in enumerate(sorted(partitions)):
        write_case(root, subject, seed0 + i)
    lines = ["Partition_ID,Subject_ID"] + [f"{p},{s}" for s, p in sorted(partitions.items())]
    (root / "partitioning_1.csv").write_text("\n".join(lines) + "\n")
    return root
