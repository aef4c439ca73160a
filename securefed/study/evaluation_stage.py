"""Study stage 4, evaluation: each site scores its test cases with the model of each method
(FedAvg: the global model; CFFL: the model of the case's cluster, assigned locally; public-start:
the protocol's pinned public weights, when it pins them); institutions
held out by the protocol are scored apart (all their cases, routed by their radiomics). Per-case
rows stay in RUNDIR/evaluation/per_case.csv (simulation: one folder holds every site's rows)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from securefed.clustering.assignments import read_assignments
from securefed.federation.task import default_task
from securefed.fileio import atomic_write_bytes, read_json, write_json_atomic
from securefed.models import build_model
from securefed.study.context import StudyContext
from securefed.training.checkpoints import load_weights
from securefed.training.local import evaluate_local
from securefed.training.local import set_weights as set_full_state
from securefed.training.pretrained import initial_weights

__all__ = ["CASE_COLUMNS", "PUBLIC_START", "read_case_rows", "run_evaluation"]

PUBLIC_START = "public-start"  # method name of the protocol's pinned public weights, untrained

CASE_COLUMNS = [
    "method", "subject_id", "site", "partition_id", "cluster", "group", "dice_tc", "dice_wt",
    "dice_et", "dice_mean", "hd95_tc", "hd95_wt", "hd95_et",
]  # fmt: skip
_METRICS = CASE_COLUMNS[6:]


def _weights_by_method(phases: dict[str, Any], cluster_ids: set[int]) -> dict[str, dict[str, str]]:
    """method -> cluster id -> weights file (relative to RUNDIR). A cluster with no training
    case at all keeps the global model."""
    global_weights = phases["global"]["weights"]
    out = {
        "fedavg": {c: global_weights for c in phases["clusters"]},
        "cffl": {c: info["weights"] for c, info in phases["clusters"].items()},
    }
    for c in cluster_ids:
        for method in out.values():
            method.setdefault(str(c), global_weights)
    return out


def run_evaluation(ctx: StudyContext) -> None:
    proto = ctx.loaded.protocol
    rows = read_assignments(ctx.paths.clusters)
    weights_of = _weights_by_method(read_json(ctx.paths.phases), {r.cluster for r in rows})
    held = ctx.held_out
    out_rows: list[dict[str, Any]] = []
    cache: dict[str, list[np.ndarray]] = {}
    model = build_model(proto.training)
    set_weights = default_task().set_weights  # checkpoints hold shared tensors once
    public = initial_weights(ctx.loaded)
    if public is not None:  # the pinned public start, untrained: what finetuning adds to it
        set_full_state(model, public)
        cache[PUBLIC_START] = default_task().get_weights(model)
        weights_of[PUBLIC_START] = {c: PUBLIC_START for c in weights_of["fedavg"]}
    scored = [r for r in rows if r.partition_id in held or r.split == "test"]
    done = 0
    for pid in sorted({r.partition_id for r in rows}):
        unseen = pid in held
        mine = [r for r in rows if r.partition_id == pid and (unseen or r.split == "test")]
        if not mine:
            continue
        site = ctx.site_of(pid)
        data = {d["subject_id"]: d for d in ctx.prepared([r.subject_id for r in mine])}
        for method, by_cluster in weights_of.items():
            for c in sorted({r.cluster for r in mine}):
                weights = by_cluster[str(c)]
                if weights not in cache:
                    cache[weights] = load_weights(ctx.paths.root / weights)
                set_weights(model, cache[weights])
                cases = [data[r.subject_id] for r in mine if r.cluster == c]
                result = evaluate_local(model, cases, proto.evaluation)
                out_rows += [
                    {**case, "method": method, "site": site, "partition_id": pid, "cluster": c,
                     "group": "unseen" if unseen else "test"}
                    for case in result["cases"]
                ]  # fmt: skip
        ctx.log(f"  {site}: {len(mine)} case(s) scored" + (" (unseen)" if unseen else ""))
        done += len(mine)
        if ctx.progress is not None:
            ctx.progress("evaluation (test cases, every method)", done, len(scored))
    if ctx.truth is not None:  # a synthetic federation: a few slices for the report
        _overlays(ctx, rows, weights_of, model, set_weights, cache)
    cluster_of = {r.subject_id: r.cluster for r in rows}
    part_of = {r.subject_id: r.partition_id for r in rows}
    for path in sorted(ctx.paths.baselines.glob("*.json")):
        doc = read_json(path)
        for case in doc["cases"]:
            sid = case["subject_id"]
            out_rows.append(
                {**case, "method": doc["method"], "cluster": cluster_of.get(sid),
                 "partition_id": part_of.get(sid), "group": "test"}
            )  # fmt: skip
    _write_rows(ctx.paths.per_case, out_rows)


OVERLAYS = "evaluation/overlays.json"
_N_OVERLAYS = 3


def _overlays(
    ctx: StudyContext,
    rows: list[Any],
    weights_of: dict[str, dict[str, str]],
    model: Any,
    set_weights: Any,
    cache: dict[str, list[np.ndarray]],
) -> None:
    """For the first test cases (by subject id) with a tumour: the slice of largest tumour area
    with the truth and the FedAvg and CFFL predictions (``plots/overlay-<i>.png``, listed in
    ``evaluation/overlays.json``). Only for a synthetic federation (``--truth``): a report of
    real data holds no image of a patient."""
    from securefed.evaluation import predict_mask
    from securefed.report.plots import plot_overlay
    from securefed.training.local import resolve_device

    proto = ctx.loaded.protocol
    test = sorted((r for r in rows if r.split == "test" and r.partition_id not in ctx.held_out),
                  key=lambda r: r.subject_id)  # fmt: skip
    out: list[dict[str, Any]] = []
    device = resolve_device(None)
    for row in test:
        if len(out) >= _N_OVERLAYS:
            break
        (case,) = ctx.prepared([row.subject_id])
        label = np.asarray(case["label"])
        if not label[1].any():
            continue
        preds = {}
        for method, name in (("fedavg", "FedAvg"), ("cffl", "CFFL")):
            weights = weights_of[method][str(row.cluster)]
            if weights not in cache:
                cache[weights] = load_weights(ctx.paths.root / weights)
            set_weights(model, cache[weights])
            preds[name] = predict_mask(model, case["image"], proto.evaluation, device)
        rel = f"plots/overlay-{len(out) + 1}.png"
        site = ctx.site_of(row.partition_id)
        plot_overlay(np.asarray(case["image"]), label, preds, ctx.paths.root / rel,
                     f"{row.subject_id} ({site}, cluster {row.cluster})")  # fmt: skip
        out.append({"subject_id": row.subject_id, "site": site, "cluster": row.cluster,
                    "plot": rel})  # fmt: skip
    write_json_atomic(ctx.paths.root / OVERLAYS, out)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CASE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CASE_COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _number(value: str) -> float | None:
    return None if value in ("", "nan", "NaN", "None") else float(value)


def read_case_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of per_case.csv with metrics as floats (None where undefined)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        out = []
        for r in csv.DictReader(fh):
            row: dict[str, Any] = dict(r)
            for k in _METRICS:
                row[k] = _number(r[k])
            row["cluster"] = int(r["cluster"]) if r["cluster"] not in ("", "None") else None
            out.append(row)
        return out
