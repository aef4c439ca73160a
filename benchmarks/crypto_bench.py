"""Crypto benchmarks: sealed messages (seal/open per size and KEM) and CKKS per 1 M floats.

Run: .venv/bin/python benchmarks/crypto_bench.py [--repeats 3] [--floats 1000000]
Prints a Markdown table (medians); results are recorded in benchmarks/results/crypto.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _median(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_messages(repeats: int) -> list[str]:
    from securefed.crypto import generate_keys
    from securefed.transport import ReplayGuard, SendCounter, open_message, seal_message

    proto = "sha256:" + "0" * 64
    rows = [
        "| KEM | payload | seal (ms) | open (ms) | envelope overhead (bytes) |",
        "|---|---|---|---|---|",
    ]
    site = generate_keys("site", "site-1")
    senders = {"site-1": site.public.signing_fingerprint}
    for kem in ("x25519", "mlkem768-x25519"):
        server = generate_keys("server", "server", kem)  # type: ignore[arg-type]
        for mb in (0.01, 1, 16):
            n = int(mb * 1024 * 1024 / 8)
            arrays = {"x": np.random.default_rng(0).normal(size=n)}
            with tempfile.TemporaryDirectory() as tmp:
                counters = SendCounter(Path(tmp) / "s")
                guard = ReplayGuard(Path(tmp) / "g")
                envs: list[bytes] = []

                def seal(arrays=arrays, counters=counters, server=server, envs=envs) -> None:
                    envs.append(
                        seal_message(
                            arrays,
                            sender=site,
                            recipient=server.public,
                            protocol_hash=proto,
                            stage="bench",
                            counters=counters,
                        )
                    )

                t_seal = _median(seal, repeats)
                queue = list(envs)

                def open_one(queue=queue, server=server, guard=guard) -> None:
                    open_message(
                        queue.pop(0),
                        recipient=server,
                        senders=senders,
                        protocol_hash=proto,
                        stage="bench",
                        guard=guard,
                    )

                t_open = _median(open_one, repeats)
                overhead = len(envs[0]) - n * 8
            rows.append(
                f"| {kem} | {mb:g} MiB | {t_seal * 1e3:.1f} | {t_open * 1e3:.1f} | {overhead} |"
            )
    return rows


def bench_ckks(repeats: int, n_floats: int, parties: int = 10) -> list[str]:
    from securefed.crypto.ckks import PRESETS, EncryptedVector, make_context, sum_encrypted

    rows = [
        f"| preset | N, coeff, scale | encrypt (s) | sum of {parties} (s) | decrypt (s) "
        "| size (MB) | max abs error |",
        "|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-1, 1, n_floats).astype(np.float32) for _ in range(parties)]
    truth = np.sum(np.stack(updates).astype(np.float64), axis=0)
    for name, params in PRESETS.items():
        secret = make_context(params)
        public = secret.public()
        t_enc = _median(lambda public=public: public.encrypt(updates[0]), repeats)
        wire = [public.encrypt(u).to_bytes() for u in updates]
        size = len(wire[0])
        encs = [EncryptedVector.from_bytes(w, public) for w in wire]
        start = time.perf_counter()
        total = sum_encrypted(encs)
        t_sum = time.perf_counter() - start
        t_dec = _median(lambda secret=secret, total=total: secret.decrypt(total), repeats)
        err = float(np.max(np.abs(secret.decrypt(total) - truth)))
        p = params
        rows.append(
            f"| {name} | {p.poly_modulus_degree}, {list(p.coeff_mod_bit_sizes)}, 2^{p.scale_bits} "
            f"| {t_enc:.2f} | {t_sum:.2f} | {t_dec:.2f} | {size / 1e6:.1f} | {err:.1e} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--floats", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    print("\n## Sealed messages (codec + HPKE + Ed25519 + replay guard, median)\n")
    print("\n".join(bench_messages(args.repeats)))
    print(f"\n## CKKS per {args.floats} float32 values (median)\n")
    print("\n".join(bench_ckks(args.repeats, args.floats)))


if __name__ == "__main__":
    main()
