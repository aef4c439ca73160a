"""DP-SGD step cost: one optimiser step of the DP model without privacy, with securefed's DP-SGD
(per-sample gradients vectorised with torch.func.vmap + Opacus's DPOptimizer, secure_mode; and
with its fallback, one backward per sample), the same with the lattice and OpenDP's exact
discrete Gaussian (``dp_sgd.noise = "discrete-gaussian"``) and with Opacus's own vectorised
GradSampleModule + DPOptimizer; peak memory of each (max RSS growth of a fresh process per
variant). The paper's DynUNet without DP for reference.

Usage: .venv/bin/python benchmarks/dpsgd_bench.py [--crop 24] [--batch 2] [--steps 20]
       [--threads 2] [--trainable all|outer-blocks|output-block|biases]
       [--out benchmarks/results/dpsgd_steps.json]
``--trainable``: the dp-unet variants train (clip, noise, update) only those parameters
(``training.trainable``), as when finetuning a public start.
Target (issue 14): the DP-SGD step <= 2.5x the non-private step of the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = (
    "dp-unet plain",
    "dp-unet securefed DP-SGD",
    "dp-unet securefed looped DP-SGD",
    "dp-unet securefed discrete DP-SGD",
    "dp-unet Opacus hooks",
    "dynunet plain",
)


def _one(
    variant: str, crop: int, batch: int, steps: int, trainable: str = "all"
) -> dict[str, float]:
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from securefed.models.networks import build_dp_unet, build_dynunet_small, freeze_untrained
    from securefed.training.local import DiceBCELoss, _looped_gradients, _per_sample_gradients

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    x = torch.randn(batch, 4, crop, crop, crop)
    y = (torch.rand(batch, 3, crop, crop, crop) > 0.8).float()
    loss_fn = DiceBCELoss()
    model = build_dynunet_small() if variant.startswith("dynunet") else build_dp_unet()
    if not variant.startswith("dynunet"):
        freeze_untrained(model, trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dp = "DP-SGD" in variant or "hooks" in variant
    net = GradSampleModule(model) if "hooks" in variant else model
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-3)
    if "discrete" in variant:
        from securefed.privacy.noise import SecureNoise
        from securefed.training.discrete_dpsgd import DiscreteGaussianDPOptimizer

        opt = DiscreteGaussianDPOptimizer(
            opt,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
            noise=SecureNoise(),
        )
    elif dp:
        gen = torch.Generator().manual_seed(1)
        opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch,
                          generator=gen, secure_mode=True)  # fmt: skip

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if "looped" in variant:  # one backward per sample (the fallback)
            grads, _ = _looped_gradients(model, params, loss_fn, x, y)
            for p, g in zip(params, grads, strict=True):
                p.grad_sample = g
        elif "securefed" in variant:
            _per_sample_gradients(model, params, loss_fn, x, y, 1)
        else:
            loss_fn(net(x), y).backward()
        opt.step()

    for _ in range(1 if "discrete" in variant else 3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sec = (time.perf_counter() - t) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds_per_step": sec,
        "rss_growth_mb": (peak - base) / 1024,
        "peak_rss_mb": peak / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=24)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--discrete-steps",
        type=int,
        default=2,
        help="steps of the discrete variant (OpenDP's exact sampler: tens of s each)",
    )
    ap.add_argument("--trainable", default="all", help="training.trainable of the dp-unet")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.variant:  # child process: one variant, JSON on stdout
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(_one(args.variant, args.crop, args.batch, args.steps, args.trainable)))
        return
    rows = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", v, "--crop", str(args.crop),
               "--batch", str(args.batch),
               "--steps", str(args.discrete_steps if "discrete" in v else args.steps),
               "--threads", str(args.threads), "--trainable", args.trainable]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[v] = json.loads(out.strip().splitlines()[-1])
    plain = rows["dp-unet plain"]["seconds_per_step"]
    print(f"crop {args.crop}^3, batch {args.batch}, {args.threads} threads, {args.steps} steps, "
          f"trainable {args.trainable}")  # fmt: skip
    print(f"{'variant':34s} {'s/step':>8s} {'x plain':>8s} {'RSS growth MB':>14s}")
    for v, r in rows.items():
        r["ratio_to_plain"] = r["seconds_per_step"] / plain
        print(f"{v:34s} {r['seconds_per_step']:8.3f} {r['ratio_to_plain']:8.2f} "
              f"{r['rss_growth_mb']:14.0f}")  # fmt: skip
    if args.out:
        meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "crop": args.crop,
                "batch": args.batch, "threads": args.threads, "steps": args.steps,
                "trainable": args.trainable,
                "load": os.getloadavg()}  # fmt: skip
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
