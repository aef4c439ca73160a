"""Client-level DP cost per site and round for the dp-unet (1,190,345 values): calibration,
encoding (clip, rotation, conditional rounding) and the noise share from OpenDP's exact discrete
Gaussian sampler (measured on a sample and scaled: it is linear in the values), the server's
decoding, and the upload against the fp32 model.

Usage: .venv/bin/python benchmarks/client_dp_bench.py [--sites 6] [--epsilon 8] [--rounds 16]
       [--sample 200000] [--out benchmarks/results/client_dp.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from securefed.privacy.ddg import (
    decode_sum,
    encode_update,
    plan_client_dp,
    rotation_seed,
)
from securefed.privacy.noise import SecureNoise

DIM = 1_190_345  # values of the dp-unet as a site sends them


class _Zero:
    name = "zero"

    def discrete_gaussian(self, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, np.int64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=6)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--sample", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/client_dp.json"))
    args = ap.parse_args()

    t = time.perf_counter()
    plan = plan_client_dp(epsilon=args.epsilon, delta=1e-6, rounds=args.rounds, clip=5.0,
                          dim=DIM, modulus=2**22, n_max=args.sites, honest=2,
                          beta=math.exp(-0.5), accountant="rdp")  # fmt: skip
    calibrate_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    update = rng.normal(size=DIM) * 0.01
    seed = rotation_seed("sha256:bench", "global", 1)
    t = time.perf_counter()
    vector = encode_update(update, plan, seed, _Zero())
    encode_s = time.perf_counter() - t
    noise = SecureNoise()
    noise.discrete_gaussian(plan.sigma_units, (10,))  # OpenDP's first call sets itself up
    t = time.perf_counter()
    noise.discrete_gaussian(plan.sigma_units, (args.sample,))
    per_value = (time.perf_counter() - t) / args.sample
    t = time.perf_counter()
    decode_sum(vector, 1, plan, seed)
    decode_s = time.perf_counter() - t
    # every site adds its share: the mean's noise norm against the mean update's largest norm C
    noise_norm = math.sqrt(args.sites) * plan.sigma_units * plan.gamma * math.sqrt(DIM)
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python "
        f"{platform.python_version()}",
        "values": DIM,
        "padded_values": plan.padded_dim,
        "sites": args.sites,
        "epsilon": args.epsilon,
        "rounds": args.rounds,
        "noise_multiplier": round(plan.noise_multiplier, 4),
        "calibrate_s": round(calibrate_s, 3),
        "encode_without_noise_s": round(encode_s, 3),
        "opendp_values_per_s": round(1 / per_value),
        "noise_share_s": round(per_value * plan.padded_dim, 1),
        "decode_s": round(decode_s, 3),
        "upload_bytes": 8 * plan.padded_dim,
        "ratio_to_fp32": round(8 * plan.padded_dim / (4 * DIM), 3),
        "noise_norm_over_mean_update_norm": round(noise_norm / args.sites / plan.clip, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
