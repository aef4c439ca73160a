"""Tiny synthetic cases and specs for the training and baseline tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from securefed.data import CaseFiles, CaseVolumes
from securefed.protocol.schema import EvaluationSpec, TrainingSpec

SHAPE = (28, 30, 24)
SPEC = TrainingSpec(
    optimizer="adam",
    lr=0.003,
    batch_size=2,
    crop_size=(16, 16, 16),
    crop_sampling="tumour-centred",
    tumour_crop_fraction=0.75,
    spacing_mm=2.0,
)
EVAL = EvaluationSpec(roi_size=(16, 16, 16), overlap=0.25, hd95=True)


def tiny_case(i: int) -> tuple[np.ndarray, np.ndarray]:
    """A brain ellipsoid with a nested tumour (edema 2 > core 1 > enhancing 4)."""
    rng = np.random.default_rng(i)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    centre = np.array(SHAPE)[:, None, None, None] / 2
    brain = (((grid - centre) / (np.array(SHAPE)[:, None, None, None] * 0.45)) ** 2).sum(0) < 1
    c = centre + rng.integers(-3, 4, size=3)[:, None, None, None]
    r = np.sqrt(((grid - c) ** 2).sum(0))
    label = np.zeros(SHAPE, np.uint8)
    label[r < 6] = 2
    label[r < 4] = 1
    label[(r >= 2.5) & (r < 3.5)] = 4
    label[~brain] = 0
    image = rng.normal(1.0, 0.05, (4, *SHAPE)).astype(np.float32)
    shift = {2: [1.0, -0.3, 0.2, 1.2], 1: [0.4, -0.5, 0.3, 0.6], 4: [0.5, -0.2, 2.0, 0.5]}
    for lab, s in shift.items():
        image[:, label == lab] += np.array(s, np.float32)[:, None]
    image[:, ~brain] = 0
    return image, label


def volumes(n: int) -> list[CaseVolumes]:
    out = []
    for i in range(n):
        image, label = tiny_case(i)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        out.append(CaseVolumes(f"case{i}", image, label, affine, (2.0, 2.0, 2.0)))
    return out


def write_case(root: Path, i: int, spacing: float = 1.0) -> CaseFiles:
    image, label = tiny_case(i)
    folder = root / f"FeTS2022_{i:05d}"
    folder.mkdir(parents=True)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    paths = {}
    for k, mod in enumerate(("flair", "t1", "t1ce", "t2")):
        paths[mod] = folder / f"{folder.name}_{mod}.nii.gz"
        nib.save(nib.Nifti1Image(image[k], affine), paths[mod])
    seg = folder / f"{folder.name}_seg.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), seg)
    return CaseFiles(folder.name, folder, paths, seg)
