"""Radiomics benchmark: adapter overhead against direct pyradiomics, and 2-worker speed-up.

    .venv/bin/python benchmarks/radiomics_bench.py [--sizes full demo] [--repeats 2]

Synthetic smooth random volumes with a brain-sized ellipsoid mask: full FeTS size 240x240x155
(about 1.5 M brain voxels) and the demo size (2 mm: 120x120x78). "direct" is pyradiomics'
RadiomicsFeatureExtractor.execute on SimpleITK images that are already preprocessed (pyradiomics
only); "adapter" is securefed's case_vector (preprocessing + conversion + checks + pyradiomics).
The speed-up runs extract_features on NIfTI cases on disk (load + preprocess + extract, fresh
cache) with 1 and then 2 workers. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from securefed.data import discover_cases
from securefed.protocol.schema import MODALITIES, RadiomicsSpec
from securefed.radiomics import case_vector, extract_features, preprocess
from securefed.radiomics.adapter import make_extractor, to_sitk

SIZES = {"full": ((240, 240, 155), 1.0), "demo": ((120, 120, 78), 2.0)}


def synth(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    semi = (shape[0] * 0.29, shape[1] * 0.355, shape[2] * 0.39)
    r2 = sum(((g - s / 2) / a) ** 2 for g, s, a in zip(grids, shape, semi, strict=True))
    brain = r2 < 1
    img = np.zeros((4, *shape), dtype=np.float32)
    for c in range(4):
        tex = gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.0 + 0.5 * c)
        img[c] = np.where(brain, 400 + 60 * c + 2000 * tex + 20 * rng.normal(size=shape), 0)
    img = np.clip(np.rint(img), 0, 32767)
    img[0][brain & (img[0] <= 0)] = 1
    return img, np.zeros(shape, dtype=np.uint8)


def time_direct(
    image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float]:
    spec = RadiomicsSpec()
    pre = preprocess(image, label, subject_id="bench")
    extractor = make_extractor(tuple(spec.feature_classes), spec.bin_width)
    images = [to_sitk(pre.image[c], spacing) for c in range(4)]
    mask = to_sitk(pre.mask.astype(np.uint8), spacing)
    t0, c0 = time.perf_counter(), time.process_time()
    for im in images:
        extractor.execute(im, mask)
    return time.perf_counter() - t0, time.process_time() - c0


def time_adapter(
    image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    case_vector(image, label, spacing, RadiomicsSpec(), subject_id="bench")
    return time.perf_counter() - t0, time.process_time() - c0


def write_cases(root: Path, shape: tuple[int, int, int], mm: float, n: int) -> None:
    lines = ["Partition_ID,Subject_ID"]
    for i in range(n):
        sid = f"FeTS2022_{i + 1:05d}"
        img, label = synth(shape, 100 + i)
        folder = root / sid
        folder.mkdir(parents=True)
        affine = np.diag([mm, mm, mm, 1.0])
        for c, m in enumerate(MODALITIES):
            nib.save(nib.Nifti1Image(img[c].astype(np.int16), affine), folder / f"{sid}_{m}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / f"{sid}_seg.nii.gz")
        lines.append(f"1,{sid}")
    (root / "partitioning_1.csv").write_text("\n".join(lines) + "\n")


def time_workers(root: Path, workers: int, cache: Path) -> float:
    cases = list(discover_cases(root).cases.values())
    parts = {c.subject_id: 1 for c in cases}
    t0 = time.perf_counter()
    res = extract_features(
        cases,
        RadiomicsSpec(),
        cache_dir=cache,
        partition_of=parts,
        split_of=dict.fromkeys(parts, "train"),
        workers=workers,
    )
    assert res.computed == len(cases)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["demo", "full"], choices=sorted(SIZES))
    ap.add_argument("--cases", type=int, default=2, help="volumes for the overhead timing")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker-cases", type=int, default=4)
    args = ap.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(
        "| size | voxels in mask | direct s/case wall (CPU) | adapter s/case wall (CPU) | "
        "overhead wall (CPU) | cases | 1 worker s | 2 workers s | speed-up | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sizes:
        shape, mm = SIZES[name]
        spacing = (mm, mm, mm)
        direct, adapter = [], []
        voxels = 0
        for i in range(args.cases):
            img, label = synth(shape, i)
            voxels = int((img[0] > 0).sum())
            for _ in range(args.repeats):  # interleaved to share machine noise
                direct.append(time_direct(img, label, spacing))
                adapter.append(time_adapter(img, label, spacing))
        dw, dc = (statistics.median(x) for x in zip(*direct, strict=True))
        aw, ac = (statistics.median(x) for x in zip(*adapter, strict=True))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "root"
            write_cases(root, shape, mm, args.worker_cases)
            w1 = time_workers(root, 1, Path(tmp) / "c1")
            w2 = time_workers(root, 2, Path(tmp) / "c2")
        load = os.getloadavg()[0]
        print(
            f"| {name} {shape[0]}x{shape[1]}x{shape[2]} | {voxels:,} | {dw:.2f} ({dc:.2f}) | "
            f"{aw:.2f} ({ac:.2f}) | {100 * (aw - dw) / dw:+.1f}% ({100 * (ac - dc) / dc:+.1f}%) | "
            f"{args.worker_cases} | {w1:.1f} | {w2:.1f} | {w1 / w2:.2f}x | {load:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
