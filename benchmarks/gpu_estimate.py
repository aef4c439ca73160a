"""An estimate of the paper's schedule on one GPU (issue 32, part 5): protocols/fets2022-cffl.toml
(300 global FedAvg rounds of one local epoch at 128^3, batch 1; 50 finetuning rounds per
cluster) on FeTS2022's 1,251 cases, from the model's counted FLOPs (torch's FlopCounterMode on
the meta device: no compute, no memory) and an assumed sustained GPU throughput. A CPU anchor
calibrates the counting: the FeTS-scale study's own step (4 mm, 24^3 crops, batch 2) counted the
same way, against the step time measured here.

    python benchmarks/gpu_estimate.py [--cpu-step-s S] [--out FILE]

Not a measurement on a GPU (none was lent to this task): the throughputs are assumptions, stated
with the result (benchmarks/results/gpu-estimate.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from securefed.models import build_model
from securefed.protocol import load_protocol

ROOT = Path(__file__).resolve().parents[1]
FETS_CASES = 1251
# FeTS2022 brains after the foreground crop at 1 mm are about 140 x 172 x 137 voxels
BRAIN_1MM = (140, 172, 137)
# sustained training throughput of 3D convolutions, fp32/TF32 (assumed; cuDNN's 3D kernels
# reach a fraction of the datasheet peak): a low, a middle and a high figure for an H100
ASSUMED_TFLOPS = (15.0, 40.0, 100.0)


def step_flops(spec: Any, crop: tuple[int, int, int], batch: int, train: bool) -> int:
    """FLOPs of one step (forward, plus backward when ``train``) on the meta device."""
    with torch.device("meta"):
        model = build_model(spec)
        x = torch.zeros((batch, 4, *crop))
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        if isinstance(out, tuple | list):
            out = out[0]
        if train:
            out.sum().backward()
    return int(counter.get_total_flops())


def windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Sliding-window count (MONAI's rule: interval roi * (1 - overlap))."""
    total = 1
    for size, r in zip(shape, roi, strict=True):
        step = max(1, int(r * (1 - overlap)))
        total *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return total


def cpu_step_seconds(spec: Any, crop: tuple[int, int, int], batch: int, repeats: int = 5) -> float:
    """Measured seconds of one training step on this CPU (after one warm-up step)."""
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn((batch, 4, *crop))

    def step() -> None:
        opt.zero_grad()
        out = model(x)
        (out[0] if isinstance(out, tuple | list) else out).mean().backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu-step-s",
        type=float,
        default=None,
        help="the CPU anchor's measured step time (default: measure it here)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    paper = load_protocol(ROOT / "protocols" / "fets2022-cffl.toml").protocol
    t, ev = paper.training, paper.evaluation
    crop = tuple(int(c) for c in t.crop_size)
    train_step = step_flops(t, crop, int(t.batch_size), train=True)
    window = step_flops(t, tuple(int(r) for r in ev.roi_size), 1, train=False)
    per_case = windows(BRAIN_1MM, tuple(int(r) for r in ev.roi_size), float(ev.overlap))
    d = paper.data
    train_cases = round(FETS_CASES * (1 - d.test_fraction) * (1 - d.val_fraction))
    val_cases = round(FETS_CASES * (1 - d.test_fraction) * d.val_fraction)
    test_cases = FETS_CASES - train_cases - val_cases
    epoch = math.ceil(train_cases / int(t.batch_size))  # steps of one epoch over every site
    steps = {
        "global (300 rounds x 1 epoch)": int(t.global_rounds) * epoch,
        "finetuning (50 rounds x 1 epoch of each cluster)": int(t.finetune_rounds) * epoch,
    }
    validations = (int(t.global_rounds) + int(t.finetune_rounds)) * val_cases * per_case
    tests = 4 * test_cases * per_case  # fedavg, cffl, local, centralized on every test case
    flops = {
        "training": sum(steps.values()) * train_step,
        "validation (every round)": validations * window,
        "test (4 methods)": tests * window,
    }
    total = sum(flops.values())

    # The CPU anchor: the FeTS-scale study's step (benchmarks/fets1251_protocol.py --study)
    from securefed.protocol.schema import TrainingSpec

    anchor_spec = TrainingSpec(crop_size=(24, 24, 24), batch_size=2, spacing_mm=4.0)
    anchor_flops = step_flops(anchor_spec, (24, 24, 24), 2, train=True)
    anchor_s = args.cpu_step_s or cpu_step_seconds(anchor_spec, (24, 24, 24), 2)
    doc = {
        "schedule": "protocols/fets2022-cffl.toml on 1,251 cases",
        "train_cases": train_cases, "val_cases": val_cases, "test_cases": test_cases,
        "train_step_gflop": train_step / 1e9, "inference_window_gflop": window / 1e9,
        "windows_per_case": per_case, "steps": steps,
        "tflop": {k: v / 1e12 for k, v in flops.items()}, "total_tflop": total / 1e12,
        "hours_at_assumed_tflops": {f"{x:g}": total / (x * 1e12) / 3600 for x in ASSUMED_TFLOPS},
        "cpu_anchor": {
            "step": "dynunet-small, 24^3, batch 2 (the FeTS-scale CPU study)",
            "gflop": anchor_flops / 1e9, "seconds": anchor_s,
            "effective_gflops": anchor_flops / anchor_s / 1e9, "threads": torch.get_num_threads(),
            "paper_schedule_days_at_this_rate": total / (anchor_flops / anchor_s) / 86400,
        },
    }  # fmt: skip
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
