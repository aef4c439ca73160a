"""Wall and CPU seconds of `audit features`' classification attack (logistic regression and
histogram gradient boosting, cross-validated: securefed.audit.features._classify) on random
released features, with OpenMP's default thread count and with one thread (what the attack
uses), for the tiny, demo and FeTS-scale sizes.

    python benchmarks/attack_speed.py
"""

from __future__ import annotations

import os
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_info, threadpool_limits


def _gradient_boosting(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0)
    cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    omp = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
    print(f"machine: {os.cpu_count()} cores, OpenMP threads by default: {omp}, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| cases x dims, classes | default threads: wall / CPU s | one thread: wall / CPU s |")
    print("|---|---|---|")
    rng = np.random.default_rng(0)
    for n, d, c in ((15, 10, 2), (45, 10, 5), (1251, 10, 23)):
        x, y = rng.normal(size=(n, d)), np.arange(n) % c
        default = _gradient_boosting(x, y)
        with threadpool_limits(limits=1, user_api="openmp"):
            one = _gradient_boosting(x, y)
        print(f"| {n} x {d}, {c} | {default[0]:.2f} / {default[1]:.2f} | "
              f"{one[0]:.2f} / {one[1]:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
