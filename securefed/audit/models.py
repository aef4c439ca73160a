"""Membership inference on the trained segmentation models (``securefed audit models RUNDIR``).

Targets: the FedAvg model (``training/global/best.npz``) and CFFL (each case scored with its
cluster's model). Members are the cases of the ``train`` split (clusters.csv), non-members those
of the ``test`` split (validation cases are left out: under a plain protocol they chose the best
round). Each case's score comes from its loss under the target model (the training loss of the
protocol on the whole preprocessed volume, sliding-window logits):

- ``loss-threshold`` (Yeom et al. 2018): a lower loss says member;
- ``reference`` (offline LiRA with a fixed variance, Carlini et al. 2022, at small scale):
  R reference models, each trained centrally on a random half of the cases with the protocol's
  recipe, give each case the losses of the models it was *not* in; the score is how far the
  target's loss falls below their mean, in units of the pooled standard deviation of those
  losses (per-case difficulty calibrated away).

Per attack: ROC AUC (chance 0.5) and TPR at 1 % and 0.1 % FPR (chance = the FPR), each with a
bootstrap interval; ``RUNDIR/audit/models.json`` and ``models.png`` (ROC curves). With a few test
cases the TPR at small FPRs is coarse: the intervals say so.

What the server sees of one site's update: ``update-membership`` and ``site-attribution``
(securefed.audit.update_attack), plain FedAvg's individual update against the SecAgg+ aggregate.
Tests: ``tests/study/test_e2e.py``, ``tests/audit/test_update_attack.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from securefed.audit.membership import membership_metrics
from securefed.errors import ConfigError, DataError
from securefed.fileio import read_json, write_json_atomic
from securefed.protocol import load_protocol

__all__ = ["membership_metrics", "run_model_attacks"]


def run_model_attacks(
    rundir: Path,
    data: Path,
    *,
    references: int = 4,
    reference_steps: int | None = None,
    truth: Path | None = None,
    progress: Any = None,
    update_crops: int = 4,
) -> dict[str, Any]:
    """Run the membership attacks on RUNDIR's FedAvg and CFFL models and the attacks on one
    site's update (``update_crops`` training crops per case gradient; 0 skips them); write
    models.json/png."""
    import torch
    from sklearn.metrics import roc_curve

    from securefed.clustering.assignments import read_assignments
    from securefed.data.cases import discover_cases
    from securefed.evaluation.inference import predict_logits
    from securefed.federation.task import default_task
    from securefed.models import build_model
    from securefed.training.baselines import train_pooled
    from securefed.training.checkpoints import load_weights
    from securefed.training.datasets import prepare_cases
    from securefed.training.local import make_loss, resolve_device
    from securefed.training.local import set_weights as set_trained

    rundir = Path(rundir)
    loaded = load_protocol(rundir / "protocol.toml")
    spec, eval_spec = loaded.protocol.training, loaded.protocol.evaluation
    phases_path, clusters_path = rundir / "training" / "phases.json", rundir / "clusters.csv"
    if not phases_path.is_file() or not clusters_path.is_file():
        raise ConfigError(f"{rundir}: no trained models (training/phases.json, clusters.csv)")
    if references < 2:
        raise ConfigError(f"--references {references}: at least 2")
    phases = read_json(phases_path)
    rows = [r for r in read_assignments(clusters_path) if r.split in ("train", "test")]
    held = set(loaded.protocol.data.held_out_partitions)
    rows = [r for r in rows if r.partition_id not in held]
    y = np.array([1 if r.split == "train" else 0 for r in rows])
    if y.sum() == 0 or y.sum() == len(y):
        raise DataError(f"{clusters_path}: needs both train (members) and test cases")
    found = discover_cases(data).cases
    missing = [r.subject_id for r in rows if r.subject_id not in found]
    if missing:
        raise DataError(f"{data}: case {missing[0]} not found (--data must be the study's data)")
    cases = prepare_cases([found[r.subject_id] for r in rows], spec)
    device = resolve_device("cpu")
    loss_fn = make_loss(spec)
    model = build_model(spec)
    set_weights = default_task().set_weights

    def losses(
        weights: list[np.ndarray], which: list[int], setter: Any = set_weights
    ) -> np.ndarray:
        setter(model, weights)  # checkpoints hold shared tensors once; train_pooled all of them
        out = np.full(len(cases), np.nan)
        for i in which:
            logits = predict_logits(model, cases[i]["image"], eval_spec, device)
            label = torch.as_tensor(cases[i]["label"], dtype=torch.float32)
            out[i] = float(loss_fn(logits[None], label[None]))
        return out

    everyone = list(range(len(cases)))
    global_w = load_weights(rundir / phases["global"]["weights"])
    targets = {"fedavg": losses(global_w, everyone)}
    cffl = np.full(len(cases), np.nan)
    for c, info in phases["clusters"].items():
        idx = [i for i, r in enumerate(rows) if str(r.cluster) == str(c)]
        if idx:
            cffl[idx] = losses(load_weights(rundir / info["weights"]), idx)[idx]
    rest = [i for i in everyone if np.isnan(cffl[i])]  # clusters without a model: global
    cffl[rest] = targets["fedavg"][rest]
    targets["cffl"] = cffl
    # Reference models: each on a random half of the cases, with the protocol's recipe.
    steps = reference_steps or max(1, int(spec.global_rounds) * max(1, int(spec.local_steps or 1)))
    rng = np.random.default_rng(0)
    ref_losses, inside = [], []
    for k in range(references):
        half = rng.permutation(len(cases))[: len(cases) // 2]
        if progress is not None:
            progress(f"reference model {k + 1}/{references}: {steps} steps on {len(half)} cases")
        w, _ = train_pooled([cases[i] for i in half], spec, eval_spec, steps=steps, lr=spec.lr,
                            seed=1000 + k, group=f"reference-{k}")  # fmt: skip
        ref_losses.append(losses(w, everyone, set_trained))
        mask = np.zeros(len(cases), bool)
        mask[half] = True
        inside.append(mask)
    ref = np.stack(ref_losses)
    out_mask = ~np.stack(inside)
    out_mean = np.array([ref[out_mask[:, i], i].mean() if out_mask[:, i].any()
                         else ref[:, i].mean() for i in everyone])  # fmt: skip
    sigma = float(np.std(ref[out_mask] - np.repeat(out_mean[None], references, 0)[out_mask]))
    sigma = sigma if sigma > 0 else 1.0
    attacks: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    for target, loss in targets.items():
        for attack, score in (("loss-threshold", -loss), ("reference", (out_mean - loss) / sigma)):
            for m in membership_metrics(y, score):
                attacks.append({"attack": "membership", "target": target, "model": attack,
                                **m, "n": len(y), "members": int(y.sum())})  # fmt: skip
            f, t, _ = roc_curve(y, score)
            curves[f"{target} / {attack}"] = {"fpr": f.tolist(), "tpr": t.tolist()}
    if update_crops > 0:
        attacks += _update_attacks(model, cases, rows, spec, global_w, set_weights,
                                   crops=update_crops, progress=progress)  # fmt: skip
    groups = _groups(truth, rows, y) if truth is not None else {}
    doc = {"kind": "model-attacks", "protocol": loaded.sha256, "by_scanner": groups,
           "members": int(y.sum()), "non_members": int(len(y) - y.sum()),
           "references": references, "reference_steps": steps,
           "dp_sgd": loaded.protocol.training.dp_sgd.enabled,
           "dp_training": loaded.protocol.training.dp_training,
           "update_crops": update_crops, "attacks": attacks, "roc": curves,
           "not_yet": []}  # fmt: skip
    out = rundir / "audit"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "models.json", doc)
    _plot(curves, out / "models.png")
    return doc


def _update_attacks(
    model: Any, cases: list[Any], rows: list[Any], spec: Any, global_w: list[np.ndarray],
    set_weights: Any, *, crops: int, progress: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """The attacks on one site's update, from the initial model and from the trained global one."""
    from securefed.audit.update_attack import run_update_attacks
    from securefed.models import build_model

    initial = build_model(spec).state_dict()
    starts = {"initial": lambda m: m.load_state_dict(initial),
              "global": lambda m: set_weights(m, global_w)}  # fmt: skip
    site_of = [int(r.partition_id) if r.split == "train" else None for r in rows]
    return run_update_attacks(model, cases, site_of, spec, starts, crops=crops, seed=0,
                              progress=progress)  # fmt: skip


def _groups(truth: Path, rows: list[Any], y: np.ndarray) -> dict[str, dict[str, int]]:
    """Members and non-members per scanner (truth.csv ``scanner``)."""
    import pandas as pd

    try:
        df = pd.read_csv(truth, dtype={"subject_id": str}).set_index("subject_id")
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{truth}: cannot read truth.csv with a subject_id column ({exc})") from exc
    if "scanner" not in df.columns:
        return {}
    out: dict[str, dict[str, int]] = {}
    for r, member in zip(rows, y, strict=True):
        if r.subject_id in df.index:
            g = out.setdefault(
                str(df.loc[r.subject_id, "scanner"]), {"members": 0, "non_members": 0}
            )
            g["members" if member else "non_members"] += 1
    return out


def _plot(curves: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=name, lw=1.5)
    ax.plot([0, 1], [0, 1], ":", color="#888", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Membership inference: ROC", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
