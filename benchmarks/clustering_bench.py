"""Clustering benchmark: ARI vs scanner for plain, local-dp and secure-aggregate clustering.

Extracted mode (the default): one or more ``--run LABEL FEATURES_CSV TRUTH_CSV REFERENCE_CSV``,
where FEATURES_CSV is the ``features.csv`` of ``securefed features extract`` on a synthetic
federation (subject_id, partition_id, split, 372 feature columns), TRUTH_CSV its ``truth.csv``
(the simulated scanner of every case: evaluation only) and REFERENCE_CSV the ``features.csv`` of
ANOTHER federation (other seed, same voxel size). Declared bounds (1..99th percentile, 10% margin)
and the 3-dim projection file (PCA of the unit-scaled reference) come from the reference only,
never from the study table.

Modes per run: plain GMM(tied) on PCA(30) (k = 10 as the paper, and k by BIC) fitted on
train+val cases; local-dp (Gaussian on each case's 372 unit-scaled values or its 3-dim
projection, then k-means); secure-aggregate (dp-histogram and dp-kmeans) through the real
protocol path (pinned bounds and projection files, per-site ledgers, CSPRNG noise:
``cluster_table_secure``). ARI is over all cases (test cases assigned, not fitted).

``--modelled`` reruns the earlier modelled-feature benchmark (radiomics-like vectors on the
presets' case plan; not pyradiomics output) for comparison.

Usage:
  .venv/bin/python benchmarks/clustering_bench.py --repeats 3 \
      --run fets-like W/feat_fetslike/features.csv W/fetslike/truth.csv W/feat_ref2/features.csv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from securefed.clustering import RadiomicsClusterer
from securefed.clustering.fixed_projection import derive_projection
from securefed.clustering.io import read_feature_table, read_truth
from securefed.clustering.scaling import scale_to_unit
from securefed.privacy.bounds import derive_bounds, write_bounds
from securefed.privacy.calibration import gaussian_sigma
from securefed.privacy.noise import SecureNoise
from securefed.protocol.loader import load_protocol
from securefed.radiomics.table import FeatureTable
from securefed.study.secure_clustering import cluster_table_secure

EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0)
SECURE = [("dp-histogram", 2, 10), ("dp-kmeans", 3, 8)]  # algorithm, rounds T, bins
PROJ_DIM = [3]  # dimension of the fixed projection (set by --proj-dim)


def modelled_tables(preset: str, seed: int) -> tuple[FeatureTable, np.ndarray]:
    """The earlier modelled features (not pyradiomics output) on a preset's case plan."""
    from securefed.data.synth.presets import PRESETS, plan_cases

    d = 372
    plan = plan_cases(PRESETS[preset], seed)
    scanners = sorted({c.scanner for c in plan})
    fixed = np.random.default_rng(1234)
    offsets = fixed.normal(0, 1.0, (len(scanners), d))
    loadings = fixed.normal(0, 1.0, (4, d))
    rng = np.random.default_rng(seed)
    sc = np.array([scanners.index(c.scanner) for c in plan])
    x = offsets[sc] + rng.normal(0, 0.15, (len(plan), 4)) @ loadings
    x += rng.normal(0, 0.6, (len(plan), d))
    parts = [c.partition_id for c in plan]
    splits = ["train"] * len(plan)
    ids = [f"case{i}" for i in range(len(plan))]
    return FeatureTable(ids, parts, splits, [f"f{i}" for i in range(d)], x), sc


def secure_protocol(folder: Path, reference: np.ndarray, columns: list[str], k: int,
                    alg: str, iters: int, bins: int, eps: float) -> Path:  # fmt: skip
    """A simulation protocol pinning bounds + projection derived from the REFERENCE matrix."""
    bounds = derive_bounds(reference, columns, source="reference federation (other seed)",
                           low_pct=1, high_pct=99, margin=0.1)  # fmt: skip
    bsha = write_bounds(bounds, folder / "bounds.json")
    unit = scale_to_unit(reference, bounds.lower, bounds.upper)
    proj = derive_projection(unit, columns, bounds.lower, bounds.upper, PROJ_DIM[0],
                             source="reference PCA")  # fmt: skip
    (folder / "projection.json").write_bytes(proj.to_json_bytes())
    psha = "sha256:" + hashlib.sha256(proj.to_json_bytes()).hexdigest()
    text = f"""schema_version = 1
[study]
name = "bench"
mode = "simulation"
[privacy]
total_epsilon = {eps}
total_delta = 1e-5
[radiomics]
binning = "per-image"
[release]
mode = "secure-aggregate"
bounds = {{ file = "bounds.json", sha256 = "{bsha}" }}
projection = "file"
projection_file = {{ file = "projection.json", sha256 = "{psha}" }}
[clustering]
k = {k}
[clustering.secure]
algorithm = "{alg}"
epsilon = {eps}
delta = 1e-6
iterations = {iters}
bins_per_dimension = {bins}
"""
    (folder / "protocol.toml").write_text(text)
    return folder / "protocol.toml"


def bench_one(label: str, table: FeatureTable, sc: np.ndarray, ref: np.ndarray,
              repeats: int, plain: bool) -> list[dict]:  # fmt: skip
    """All modes on one study table; ``sc`` = scanner index per row (truth, evaluation only)."""
    rows: list[dict] = []
    n, k = len(sc), len(set(sc.tolist()))
    fit = table.fit_mask
    x = np.asarray(table.values)

    def add(mode: str, eps: float, labels: np.ndarray, seconds: float, **extra: object) -> None:
        ari = float(adjusted_rand_score(sc, labels))
        rows.append(dict(preset=label, n=n, mode=mode, eps=eps, ari=ari, s=seconds, **extra))
        print(f"{label} {mode} eps={eps:g} ari={ari:.3f} {seconds:.1f}s", flush=True)

    if plain:
        t = time.perf_counter()
        est = RadiomicsClusterer("gmm", k=10, pca_components=30, n_init=20, seed=6).fit(x[fit])
        add("plain gmm k=10 (paper)", np.inf, est.predict(x), time.perf_counter() - t)
        t = time.perf_counter()
        est = RadiomicsClusterer("gmm", k=5, k_selection="bic", k_min=2, k_max=12,
                                 pca_components=30, n_init=5, seed=6).fit(x[fit])  # fmt: skip
        add(f"plain gmm bic (k={est.k_})", np.inf, est.predict(x), time.perf_counter() - t)
        t = time.perf_counter()
        est = RadiomicsClusterer("gmm", k=5, k_selection="silhouette", k_min=2, k_max=12,
                                 pca_components=30, n_init=5, seed=6).fit(x[fit])  # fmt: skip
        add(f"plain gmm silhouette (k={est.k_})", np.inf, est.predict(x),
            time.perf_counter() - t)  # fmt: skip
    bounds = derive_bounds(ref, table.columns, source="reference", low_pct=1, high_pct=99,
                           margin=0.1)  # fmt: skip
    unit = scale_to_unit(x, bounds.lower, bounds.upper)
    proj = derive_projection(scale_to_unit(ref, bounds.lower, bounds.upper), table.columns,
                             bounds.lower, bounds.upper, PROJ_DIM[0],
                             source="reference PCA")  # fmt: skip
    y = proj(x)
    noise = SecureNoise()
    for _rep in range(repeats):
        for eps in EPSILONS:
            for name, vals in (("local-dp 372 dims", unit), (f"local-dp {y.shape[1]}-dim proj", y)):
                t = time.perf_counter()
                sigma = gaussian_sigma(eps, 1e-6, float(np.sqrt(vals.shape[1])))
                noisy = vals + noise.gaussian(sigma, vals.shape)
                km = KMeans(k, n_init=10, random_state=0).fit(noisy[fit])
                add(name, eps, km.predict(noisy), time.perf_counter() - t)
            for alg, iters, bins in SECURE:
                with tempfile.TemporaryDirectory() as tmp:
                    p = secure_protocol(Path(tmp), ref, table.columns, k, alg, iters, bins, eps)
                    t = time.perf_counter()
                    labels, res = cluster_table_secure(table, load_protocol(p), Path(tmp) / "led")
                    add(f"secure {alg} (T={iters}, {y.shape[1]}-dim, {bins} bins)", eps, labels,
                        time.perf_counter() - t,
                        sim_s=res.seconds)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", nargs=4, action="append", default=[],
                    metavar=("LABEL", "FEATURES", "TRUTH", "REFERENCE"))  # fmt: skip
    ap.add_argument("--modelled", action="store_true", help="the earlier modelled features")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-plain", action="store_true", help="skip the (slow) plain GMM rows")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="clustering_extracted", help="output file stem")
    ap.add_argument("--proj-dim", type=int, default=3, help="dimension of the fixed projection")
    ap.add_argument("--bins", type=int, default=10, help="dp-histogram bins per dimension")
    args = ap.parse_args()
    PROJ_DIM[0] = args.proj_dim
    SECURE[0] = ("dp-histogram", 2, args.bins)
    rows: list[dict] = []
    sources: dict[str, object] = {}
    if args.modelled:
        for preset in ("fets-like", "fets-1251"):
            ref, _ = modelled_tables(preset, 999)
            for rep in range(args.repeats):
                table, sc = modelled_tables(preset, rep)
                rows += bench_one(preset, table, sc, np.asarray(ref.values), 1, rep == 0)
    for label, feats, truth, reference in args.run:
        table = read_feature_table(feats)
        ref = read_feature_table(reference)
        if ref.columns != table.columns:
            raise SystemExit(f"{reference}: columns differ from {feats}")
        scanner = read_truth(truth, table.subject_ids)["scanner"]
        names = sorted(set(scanner.tolist()))
        sc = np.array([names.index(s) for s in scanner])
        sources[label] = dict(features=feats, truth=truth, reference=reference,
                              cases=len(sc), reference_cases=len(ref.subject_ids),
                              scanners=names)  # fmt: skip
        rows += bench_one(label, table, sc, np.asarray(ref.values), args.repeats, not args.no_plain)
    write_results(rows, args.out, args.name, args.repeats, sources)


def write_results(rows: list[dict], out: Path, name: str, repeats: int, sources: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["preset"], r["n"], r["mode"], r["eps"]), []).append(r)
    lines = [
        "| federation (cases) | mode | epsilon | ARI vs scanner, mean (min) | runs | seconds |",
        "|---|---|---|---|---|---|",
    ]
    summary = []
    for (preset, n, mode, eps), rs in groups.items():
        a = [r["ari"] for r in rs]
        s = float(np.mean([r["s"] for r in rs]))
        lines.append(
            f"| {preset} ({n}) | {mode} | {eps:g} | {np.mean(a):.3f} ({min(a):.3f}) "
            f"| {len(a)} | {s:.2f} |"
        )
        summary.append(dict(preset=preset, n=n, mode=mode, eps=eps, ari_mean=float(np.mean(a)),
                            ari_min=float(min(a)), runs=len(a), seconds=s))  # fmt: skip
    doc = dict(
        machine=f"{platform.machine()} {os.cpu_count()} cpus python {platform.python_version()}",
        load_avg_at_end=os.getloadavg(),
        repeats=repeats,
        sources=sources,
        rows=summary,
        runs=rows,
    )

    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    _write(out / f"{name}_table.md", ("\n".join(lines) + "\n").encode())
    _write(out / f"{name}.json", json.dumps(doc, indent=1, default=str).encode())
    presets = list(dict.fromkeys(s["preset"] for s in summary))
    fig, axes = plt.subplots(1, len(presets), figsize=(5.5 * len(presets), 4), squeeze=False,
                             sharey=True)  # fmt: skip
    for ax, preset in zip(axes[0], presets, strict=True):
        for mode in sorted({s["mode"] for s in summary if np.isfinite(s["eps"])}):
            pts = sorted((s["eps"], s["ari_mean"]) for s in summary
                         if s["preset"] == preset and s["mode"] == mode)  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=mode)
        for s in summary:
            if s["preset"] == preset and not np.isfinite(s["eps"]):
                ax.axhline(s["ari_mean"], ls=":", lw=1, color="black" if "bic" in s["mode"]
                           else "brown", label=s["mode"])  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
        ax.minorticks_off()
        ax.axhline(0.9, color="grey", ls="--", lw=0.8)
        ax.set_title(preset)
        ax.set_xlabel("epsilon (per patient, whole clustering stage)")
    axes[0][0].set_ylabel("ARI vs scanner")
    axes[0][-1].legend(fontsize=7)
    png = out / f"{name}_ari_vs_epsilon.png"
    fig.savefig(str(png) + ".tmp.png", dpi=110, bbox_inches="tight")
    os.replace(str(png) + ".tmp.png", png)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
