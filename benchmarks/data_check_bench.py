"""Cost of `securefed data check` per FeTS-sized case: header-only vs the full (default) check.

    .venv/bin/python benchmarks/data_check_bench.py [--cases 3]

Writes CASES synthetic cases of 240 x 240 x 155 (four int16 modalities + a uint8 segmentation) in
a temporary folder and times ``load_federation(root, check=...)``. Results: results/data_check.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from securefed.data import load_federation


def _write(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sid = f"FeTS2022_{i:05d}"
        folder = root / sid
        folder.mkdir()
        base = np.zeros((240, 240, 155), np.float32)
        base[40:200, 40:200, 20:135] = rng.normal(500, 50, (160, 160, 115))
        for m in ("flair", "t1", "t1ce", "t2"):
            nib.save(
                nib.Nifti1Image(base.astype(np.int16), np.eye(4)), folder / f"{sid}_{m}.nii.gz"
            )
        seg = np.zeros((240, 240, 155), np.uint8)
        seg[100:120, 100:120, 60:80] = 2
        nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / f"{sid}_seg.nii.gz")
    rows = "".join(f"1,FeTS2022_{i:05d}\n" for i in range(n))
    (root / "partitioning_1.csv").write_text("Partition_ID,Subject_ID\n" + rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root, args.cases)
        for level in ("header", "full"):
            start = time.perf_counter()
            load_federation(root, "partitioning_1", check=level)  # type: ignore[arg-type]
            per_case = (time.perf_counter() - start) / args.cases
            print(f"{level}: {per_case:.3f} s per case")


if __name__ == "__main__":
    main()
