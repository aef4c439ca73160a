"""Seconds of one forward pass of the paper's DynUNet (eval mode, no gradient) per sliding-window
shape, at 1 and 2 torch threads: which evaluation windows are cheap on this CPU.

    python benchmarks/window_shape_bench.py
"""

from __future__ import annotations

import os
import time

import torch

from securefed.models.networks import build_dynunet_small

SHAPES = ((32, 32, 32), (40, 40, 32), (64, 64, 64), (64, 80, 64), (72, 80, 64), (80, 80, 64),
          (128, 128, 128))  # fmt: skip


def main() -> None:
    model = build_dynunet_small().eval()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}")
    print("| window | threads | seconds per pass | us per voxel |\n|---|---:|---:|---:|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for shape in SHAPES:
            x = torch.randn(1, 4, *shape)
            with torch.no_grad():
                model(x)  # warm-up: the backend picks its kernels for this shape
                t0 = time.perf_counter()
                for _ in range(3):
                    model(x)
            seconds = (time.perf_counter() - t0) / 3
            voxels = shape[0] * shape[1] * shape[2]
            print(f"| {' x '.join(map(str, shape))} | {threads} | {seconds:.3f} | "
                  f"{seconds / voxels * 1e6:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
