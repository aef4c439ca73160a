"""Attacks on what the server holds of the features (``securefed audit features RUNDIR --truth``).

The attacker is the server (or anyone holding its collected table, ``RUNDIR/server/features``):

- ``scanner-inference`` / ``institution-inference``: the scanner or institution of a released
  vector alone (cross-validated logistic regression and gradient boosting, the better reported);
  metric accuracy, chance the majority class, exact Clopper-Pearson interval;
- ``attribute-inference``: tumour volumes TC/WT/ET (truth.csv ``tc_ml``, ``wt_ml``, ``et_ml``)
  from the released vector (cross-validated ridge regression); metric R^2 against a mean
  predictor (chance 0), bootstrap interval;
- ``linkage``: the attacker holds a patient's own images, so it can compute that patient's raw
  features and map them as a release would (clip and project, without noise: public); it looks
  for the patient's record among the released ones (nearest neighbour); metrics top-1 and top-5
  rates against 1/n and 5/n, Clopper-Pearson intervals;
- ``reconstruction`` (with ``--data``): a ridge decoder from the released vector to the case's
  FLAIR at 16^3 (z-scored), cross-validated; SSIM and PSNR (MONAI) against predicting the mean
  image, bootstrap intervals.

A secure-aggregate release sends no per-case vector: the server holds noised sums only, and
every attack above on per-case records does not apply (said in ``not_applicable``).
Results: ``RUNDIR/audit/features.json`` and ``features.png``. These attacks measure leakage; no
protocol claim bounds their success directly, so they are reported, never an exit 4.
Tests: ``tests/study/test_feature_attacks.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import ConfigError, DataError
from securefed.fileio import write_json_atomic
from securefed.protocol import LoadedProtocol, load_protocol
from securefed.stats import bootstrap_interval, clopper_pearson

__all__ = ["run_feature_attacks"]

CONFIDENCE = 0.95


def _cp(k: int, n: int) -> list[float]:
    lo, hi = clopper_pearson(k, n, CONFIDENCE)
    return [lo, hi]


def _folds(y: np.ndarray | None, n: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    if y is not None:
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2:
            return StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True,
                                   random_state=0)  # fmt: skip
    return KFold(n_splits=min(5, n), shuffle=True, random_state=0)


def _classify(x: np.ndarray, y: np.ndarray, target: str, attack: str) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    classes, counts = np.unique(y, return_counts=True)
    chance = float(counts.max() / len(y))
    if len(classes) < 2:
        return {"attack": attack, "target": target, "metric": "accuracy", "value": 1.0,
                "chance": 1.0, "ci": [1.0, 1.0], "n": len(y), "note": "one class only"}  # fmt: skip
    models = {
        "logistic-regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "gradient-boosting": HistGradientBoostingClassifier(max_iter=100, random_state=0),
    }
    best: tuple[float, str] = (-1.0, "")
    # one OpenMP thread for gradient boosting: its per-tree work on a few hundred released rows
    # is too small to share, and on a busy machine the threads spin-wait (10-25x slower on the
    # 2-core VM: benchmarks/results/audit.md, "Attack speed")
    with threadpool_limits(limits=1, user_api="openmp"):
        for name, model in models.items():
            pred = cross_val_predict(model, x, y, cv=_folds(y, len(y)))
            acc = float(np.mean(pred == y))
            best = max(best, (acc, name))
    k = round(best[0] * len(y))
    return {"attack": attack, "target": target, "metric": "accuracy", "value": best[0],
            "chance": chance, "ci": _cp(k, len(y)), "n": len(y), "model": best[1]}  # fmt: skip


def _regress(x: np.ndarray, y: np.ndarray, target: str) -> dict[str, Any]:
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    pred = cross_val_predict(model, x, y, cv=_folds(None, len(y)))

    def r2(truth: np.ndarray, predicted: np.ndarray) -> float:
        return float(r2_score(truth, predicted))  # 0 for a constant truth (force_finite)

    return {"attack": "attribute-inference", "target": target, "metric": "r2",
            "value": r2(y, pred), "chance": 0.0,
            "ci": bootstrap_interval(r2, [y, pred], paired=True, confidence=CONFIDENCE),
            "n": len(y), "model": "ridge"}  # fmt: skip


def _linkage(released: np.ndarray, attacker: np.ndarray) -> list[dict[str, Any]]:
    """Row i of ``attacker`` is the patient of released row i."""
    n = len(released)
    scale = released.std(axis=0)
    scale[scale == 0] = 1.0
    a, r = attacker / scale, released / scale
    # squared distances without the (n, n, d) intermediate (1251 cases x 372 values: 4.6 GB)
    dist = (a**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2.0 * (a @ r.T)
    rank = (dist < dist[np.arange(n), np.arange(n)][:, None]).sum(1)  # 0 = the right record
    out = []
    for k in (1, 5):
        hits = int(np.sum(rank < k))
        out.append({"attack": "linkage", "target": f"top-{k}", "metric": f"top-{k} rate",
                    "value": hits / n, "chance": min(1.0, k / n), "ci": _cp(hits, n),
                    "n": n})  # fmt: skip
    return out


def _attacker_view(rundir: Path, loaded: LoadedProtocol, subject_ids: list[str],
                   columns: list[str]) -> np.ndarray:  # fmt: skip
    """Each released case's raw features, mapped as a release maps them (without noise)."""
    from securefed.privacy.protection import release_space
    from securefed.radiomics.storage import load_table

    raw: dict[str, np.ndarray] = {}
    raw_columns: tuple[str, ...] = ()
    for featdir in sorted((rundir / "sites").glob("*/features")):
        table, _ = load_table(featdir)
        raw_columns = table.columns
        for sid, row in zip(table.subject_ids, table.values, strict=True):
            raw[sid] = row
    missing = [s for s in subject_ids if s not in raw]
    if missing:
        raise DataError(f"{rundir}/sites: no raw features for {missing[0]} (the attacker's view)")
    matrix = np.stack([raw[s] for s in subject_ids])
    mapped = release_space(loaded, raw_columns, matrix)
    if mapped.shape[1] != len(columns):
        raise DataError("attacker view: released columns differ from the protocol's mapping")
    return mapped


def _reconstruction(data: Path, subject_ids: list[str], x: np.ndarray) -> list[dict[str, Any]]:
    import torch
    from monai.metrics import PSNRMetric, SSIMMetric
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from securefed.data.cases import discover_cases
    from securefed.data.volumes import load_case

    cases = discover_cases(data).cases
    size = 16
    vols = []
    for sid in subject_ids:
        if sid not in cases:
            raise DataError(f"{data}: case {sid} not found (--data must be the study's data)")
        flair = load_case(cases[sid]).image[0]
        t = torch.from_numpy(flair)[None, None]
        small = torch.nn.functional.interpolate(t, size=(size,) * 3, mode="area")[0, 0].numpy()
        small = (small - small.mean()) / (small.std() + 1e-6)
        vols.append(small.ravel())
    y = np.stack(vols)
    decoder = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 4, 11)))
    pred = cross_val_predict(decoder, x, y, cv=_folds(None, len(y)))
    mean = np.stack([y[np.arange(len(y)) != i].mean(0) for i in range(len(y))])  # leave-one-out
    rng_ = float(y.max() - y.min())
    ssim, psnr = SSIMMetric(spatial_dims=3, data_range=rng_, win_size=5), PSNRMetric(rng_)

    def per_case(metric: Any, p: np.ndarray) -> np.ndarray:
        a = torch.from_numpy(p.reshape(-1, 1, size, size, size)).float()
        b = torch.from_numpy(y.reshape(-1, 1, size, size, size)).float()
        return metric(a, b).numpy().ravel()

    out = []
    for name, metric in (("ssim", ssim), ("psnr", psnr)):
        dec, base = per_case(metric, pred), per_case(metric, mean)
        out.append({"attack": "reconstruction", "target": f"flair {size}^3", "metric": name,
                    "value": float(dec.mean()), "chance": float(base.mean()),
                    "ci": bootstrap_interval(np.mean, [dec], vectorized=True,
                                             confidence=CONFIDENCE),
                    "n": len(dec), "model": "ridge decoder vs mean image"})  # fmt: skip
    return out


def run_feature_attacks(
    rundir: Path, truth: Path | None = None, *, data: Path | None = None
) -> dict[str, Any]:
    """Run every attack on RUNDIR's collected features; write ``RUNDIR/audit/features.json``
    and ``features.png``; return the document. Without ``truth`` (real data) the institution is
    each record's partition id (what the server holds beside it) and the attacks that need a
    synthetic ground truth (scanner, tumour volumes) are listed as not applicable."""
    import pandas as pd

    from securefed.server.collect import load_collected

    rundir = Path(rundir)
    loaded = load_protocol(rundir / "protocol.toml")
    mode = loaded.protocol.release.mode
    doc: dict[str, Any] = {"kind": "feature-attacks", "protocol": loaded.sha256,
                           "release_mode": mode, "epsilon": loaded.protocol.release.epsilon,
                           "attacks": [], "not_applicable": []}  # fmt: skip
    names = ["scanner-inference", "institution-inference", "attribute-inference", "linkage",
             "reconstruction"]  # fmt: skip
    if mode == "secure-aggregate":
        why = (
            "no per-case vector leaves a site: the server holds masked, noised per-cluster "
            "counts and sums only; an attack on per-case records has nothing to attack"
        )
        doc["not_applicable"] = [{"attack": a, "why": why} for a in names]
        return _write(rundir, doc)
    folder = rundir / "server" / "features"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no collected features (run the study's features stage)")
    held = load_collected(folder)
    x = np.asarray(held.values, dtype=np.float64)
    if truth is None:
        rows = pd.DataFrame({"institution": [str(p) for p in held.partition_ids]},
                            index=list(held.subject_ids))  # fmt: skip
        why = "needs --truth (a synthetic federation's ground truth)"
        doc["not_applicable"] += [{"attack": "scanner-inference", "why": why},
                                  {"attack": "attribute-inference", "why": why}]  # fmt: skip
        doc["institution_source"] = "partition file (no truth.csv)"
    else:
        rows = _truth_rows(Path(truth), held.subject_ids)
    for col, attack in (("scanner", "scanner-inference"), ("institution", "institution-inference")):
        if col in rows.columns:
            doc["attacks"].append(_classify(x, rows[col].astype(str).to_numpy(), col, attack))
    for col in ("tc_ml", "wt_ml", "et_ml"):
        if col in rows.columns:
            doc["attacks"].append(_regress(x, rows[col].to_numpy(dtype=np.float64), col))
    attacker = _attacker_view(rundir, loaded, held.subject_ids, held.columns)
    doc["attacks"] += _linkage(x, attacker)
    if data is not None:
        doc["attacks"] += _reconstruction(Path(data), held.subject_ids, x)
    else:
        doc["not_applicable"].append({"attack": "reconstruction", "why": "needs --data (the "
                                      "study's images, for the decoder's targets)"})  # fmt: skip
    return _write(rundir, doc)


def _truth_rows(truth: Path, subject_ids: list[str]) -> Any:
    """truth.csv's rows of the released cases, in their order."""
    import pandas as pd

    try:
        df = pd.read_csv(truth, dtype={"subject_id": str}).set_index("subject_id")
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{truth}: cannot read truth.csv with a subject_id column ({exc})") from exc
    absent = [s for s in subject_ids if s not in df.index]
    if absent:
        raise DataError(f"{truth}: {len(absent)} released cases are missing, e.g. {absent[0]}")
    return df.loc[subject_ids]


def _write(rundir: Path, doc: dict[str, Any]) -> dict[str, Any]:
    out = rundir / "audit"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "features.json", doc)
    _plot(doc["attacks"], out / "features.png")
    return doc


def _plot(attacks: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in attacks if a["metric"] != "psnr"]  # dB: not on this scale
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * max(1, len(attacks)) + 1.3))
    labels = [f"{a['attack']} ({a['target']}, {a['metric']})" for a in attacks]
    for i, a in enumerate(attacks):
        lo, hi = a["ci"]
        ax.plot([lo, hi], [i, i], color="#4c72b0", lw=2)
        ax.plot(a["value"], i, "o", color="#4c72b0")
        ax.plot(a["chance"], i, "|", color="#c44e52", ms=12, mew=2)
    ax.set_yticks(range(len(attacks)), labels, fontsize=7)
    ax.set_xlabel("attack success (dot, 95 % interval) and chance (red bar)")
    if attacks and not any(math.isnan(a["value"]) for a in attacks):
        ax.set_title("Attacks on the released features", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
