"""Clustering benchmark: ARI vs scanner for plain, local-dp and secure-aggregate clustering.

Feature source: MODELLED radiomics-like vectors (372 values per case: a fixed per-scanner offset,
a few shared anatomical directions and per-feature noise) on the case plan of the synthetic
presets (securefed.data.synth.presets.plan_cases: institutions, sizes and scanner mixes of
`fets-like`, 267 cases, and `fets-1251`, 1251 cases). Not pyradiomics output: extracting 1251
cases would take about 30 CPU-minutes here. Bounds and the projection file are derived from a
REFERENCE federation (another seed), never from the study table.

Usage: .venv/bin/python benchmarks/clustering_bench.py [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from securefed.clustering import RadiomicsClusterer
from securefed.clustering.projection import derive_projection
from securefed.clustering.scaling import scale_to_unit
from securefed.data.synth.presets import PRESETS, plan_cases
from securefed.federated.secure_clustering import run_secure_clustering
from securefed.privacy.bounds import derive_bounds
from securefed.privacy.calibration import gaussian_sigma
from securefed.privacy.ledger import Ledger
from securefed.privacy.noise import SecureNoise
from securefed.protocol import parse_protocol
from securefed.protocol.loader import LoadedProtocol, protocol_hash

D = 372
EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0)


def modelled_features(preset: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    plan = plan_cases(PRESETS[preset], seed)
    scanners = sorted({c.scanner for c in plan})
    fixed = np.random.default_rng(1234)
    offsets = fixed.normal(0, 1.0, (len(scanners), D))
    loadings = fixed.normal(0, 1.0, (4, D))
    rng = np.random.default_rng(seed)
    sc = np.array([scanners.index(c.scanner) for c in plan])
    x = offsets[sc] + rng.normal(0, 0.15, (len(plan), 4)) @ loadings
    x += rng.normal(0, 0.6, (len(plan), D))
    parts = np.array([c.partition_id for c in plan])
    return x, sc, parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    rows: list[dict] = []
    for preset in ("fets-like", "fets-1251"):
        ref, _, _ = modelled_features(preset, 999)
        bounds = derive_bounds(
            ref,
            [f"f{i}" for i in range(D)],
            source="reference seed 999",
            low_pct=1,
            high_pct=99,
            margin=0.1,
        )
        proj = derive_projection(
            scale_to_unit(ref, bounds.lower, bounds.upper),
            bounds.columns,
            bounds.lower,
            bounds.upper,
            3,
            source="ref",
        )
        for rep in range(args.repeats):
            x, sc, parts = modelled_features(preset, rep)
            n = len(sc)
            k = len(set(sc.tolist()))
            t = time.perf_counter()
            est = RadiomicsClusterer("gmm", k=10, pca_components=30, n_init=20, seed=6).fit(x)
            rows.append(
                dict(
                    preset=preset,
                    n=n,
                    mode="plain gmm k=10 (paper)",
                    eps=np.inf,
                    ari=adjusted_rand_score(sc, est.predict(x)),
                    s=time.perf_counter() - t,
                )
            )
            t = time.perf_counter()
            est = RadiomicsClusterer(
                "gmm", k=5, k_selection="bic", k_min=2, k_max=8, pca_components=30, n_init=5, seed=6
            ).fit(x)
            rows.append(
                dict(
                    preset=preset,
                    n=n,
                    mode=f"plain gmm bic (k={est.k_})",
                    eps=np.inf,
                    ari=adjusted_rand_score(sc, est.predict(x)),
                    s=time.perf_counter() - t,
                )
            )
            y = proj(x)  # per-case 3-dim release in [0,1]^3
            noise = SecureNoise()
            for eps in EPSILONS:
                for name, vals, sens in (
                    ("local-dp 372 dims", scale_to_unit(x, bounds.lower, bounds.upper), np.sqrt(D)),
                    ("local-dp 3-dim proj", y, np.sqrt(3)),
                ):
                    t = time.perf_counter()
                    sigma = gaussian_sigma(eps, 1e-6, sens)
                    noisy = vals + noise.gaussian(sigma, vals.shape)
                    from sklearn.cluster import KMeans

                    km = KMeans(k, n_init=10, random_state=0).fit(noisy)
                    rows.append(
                        dict(
                            preset=preset,
                            n=n,
                            mode=name,
                            eps=eps,
                            ari=adjusted_rand_score(sc, km.labels_),
                            s=time.perf_counter() - t,
                        )
                    )
                for alg, iters, bins in (("dp-histogram", 2, 10), ("dp-kmeans", 3, 8)):
                    p = parse_protocol({
                        "schema_version": 1, "study": {"name": "b", "mode": "simulation"},
                        "privacy": {"total_epsilon": eps, "total_delta": 1e-5},
                        "release": {"mode": "secure-aggregate",
                                    "bounds": {"file": "b.json", "sha256": "sha256:" + "0" * 64}},
                        "clustering": {"k": k, "secure": {
                            "algorithm": alg, "epsilon": eps, "delta": 1e-6,
                            "iterations": iters, "bins_per_dimension": bins}}})  # fmt: skip
                    loaded = LoadedProtocol(p, protocol_hash(p), None, "")
                    pts = {f"site-{q}": y[parts == q] for q in sorted(set(parts.tolist()))}
                    with tempfile.TemporaryDirectory() as tmp:
                        ledgers = {s: Ledger.for_protocol(Path(tmp) / s, loaded, s) for s in pts}
                        res = run_secure_clustering(
                            pts, p, ledgers, lambda s: SecureNoise(), context=b"bench"
                        )
                        spent = max(led.spent() for led in ledgers.values())
                    yhat = np.concatenate([res.labels[s] for s in sorted(pts)])
                    ytrue = np.concatenate([sc[parts == int(s.split("-")[1])] for s in sorted(pts)])
                    rows.append(
                        dict(
                            preset=preset,
                            n=n,
                            mode=f"secure {alg} (T={iters})",
                            eps=eps,
                            ari=adjusted_rand_score(ytrue, yhat),
                            s=res.seconds,
                            spent=spent,
                        )
                    )
            print(preset, rep, "done", flush=True)
    write_results(rows, args.out, args.repeats)


def write_results(rows: list[dict], out: Path, repeats: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["preset"], r["n"], r["mode"], r["eps"]), []).append(r)
    lines = [
        "| preset (cases) | mode | epsilon | ARI vs scanner, mean (min) | seconds |",
        "|---|---|---|---|---|",
    ]
    summary = []
    for (preset, n, mode, eps), rs in groups.items():
        a = [r["ari"] for r in rs]
        s = float(np.mean([r["s"] for r in rs]))
        lines.append(
            f"| {preset} ({n}) | {mode} | {eps:g} | {np.mean(a):.3f} ({min(a):.3f}) | {s:.2f} |"
        )
        summary.append(
            dict(
                preset=preset,
                n=n,
                mode=mode,
                eps=eps,
                ari_mean=float(np.mean(a)),
                ari_min=float(min(a)),
                seconds=s,
            )
        )
    (out / "clustering_table.md").write_text("\n".join(lines) + "\n")
    (out / "clustering.json").write_text(
        json.dumps(
            dict(
                machine=f"{platform.machine()} python {platform.python_version()}",
                repeats=repeats,
                rows=summary,
            ),
            indent=1,
            default=str,
        )
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, preset in zip(axes, ("fets-like", "fets-1251"), strict=True):
        for mode in sorted({s["mode"] for s in summary if np.isfinite(s["eps"])}):
            pts = sorted(
                (s["eps"], s["ari_mean"])
                for s in summary
                if s["preset"] == preset and s["mode"] == mode
            )
            ax.plot(*zip(*pts, strict=True), marker="o", label=mode)
        ax.set_xscale("log")
        ax.axhline(0.9, color="grey", ls="--", lw=0.8)
        ax.set_title(preset)
        ax.set_xlabel("epsilon (per patient, whole clustering stage)")
    axes[0].set_ylabel("ARI vs scanner")
    axes[1].legend(fontsize=7)
    fig.savefig(out / "clustering_ari_vs_epsilon.png", dpi=110, bbox_inches="tight")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
