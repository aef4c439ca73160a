"""Study stage 4: each site scores its test cases with the model of each method (FedAvg: the
global model; CFFL: the model of the case's cluster, assigned locally); institutions held out by
the protocol are scored apart (all their cases, routed by their radiomics). Per-case rows stay in
RUNDIR/evaluation/per_case.csv (simulation: one folder holds every site's rows)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from securefed.fileio import atomic_write_bytes
from securefed.report import read_json

__all__ = ["run_evaluation", "read_case_rows", "CASE_COLUMNS"]

CASE_COLUMNS = [
    "method", "subject_id", "site", "partition_id", "cluster", "group", "dice_tc", "dice_wt",
    "dice_et", "dice_mean", "hd95_tc", "hd95_wt", "hd95_et",
]  # fmt: skip


def run_evaluation(ctx: Any) -> None:
    from securefed.federated.checkpoints import load_weights
    from securefed.federated.flower.task import default_task
    from securefed.federated.local import evaluate_local
    from securefed.federated.study import read_clusters
    from securefed.federated.training_stage import prepared
    from securefed.models import build_model

    proto = ctx.loaded.protocol
    rows = read_clusters(ctx.paths.clusters)
    phases = read_json(ctx.paths.training / "phases.json")
    root = ctx.paths.root
    weights_of = {"fedavg": {c: phases["global"]["weights"] for c in phases["clusters"]}}
    weights_of["cffl"] = {c: info["weights"] for c, info in phases["clusters"].items()}
    cluster_ids = {r["cluster"] for r in rows}
    for c in cluster_ids:  # a cluster with no training case at all keeps the global model
        for method in ("fedavg", "cffl"):
            weights_of[method].setdefault(str(c), phases["global"]["weights"])
    site_of = {s.partition_id: s.id for s in ctx.sites}
    held = ctx.held_out
    out_rows: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}
    model = build_model(proto.training)
    set_weights = default_task().set_weights  # checkpoints hold shared tensors once
    for pid in sorted({r["partition_id"] for r in rows}):
        unseen = pid in held
        mine = [r for r in rows if r["partition_id"] == pid and (unseen or r["split"] == "test")]
        if not mine:
            continue
        data = {d["subject_id"]: d for d in prepared(ctx, [r["subject_id"] for r in mine])}
        for method in ("fedavg", "cffl"):
            for c in sorted({r["cluster"] for r in mine}):
                path = weights_of[method][str(c)]
                if path not in cache:
                    cache[path] = load_weights(root / path)
                set_weights(model, cache[path])
                cases = [data[r["subject_id"]] for r in mine if r["cluster"] == c]
                result = evaluate_local(model, cases, proto.evaluation)
                for case in result["cases"]:
                    out_rows.append(
                        {**case, "method": method, "site": site_of.get(pid, str(pid)),
                         "partition_id": pid, "cluster": c,
                         "group": "unseen" if unseen else "test"}
                    )  # fmt: skip
        ctx.log(
            f"  {site_of.get(pid, pid)}: {len(mine)} case(s) scored"
            + (" (unseen)" if unseen else "")
        )
    cluster_of = {r["subject_id"]: r["cluster"] for r in rows}
    part_of = {r["subject_id"]: r["partition_id"] for r in rows}
    for path in sorted((ctx.paths.training / "baselines").glob("*.json")):
        doc = read_json(path)
        for case in doc["cases"]:
            sid = case["subject_id"]
            out_rows.append(
                {**case, "method": doc["method"], "cluster": cluster_of.get(sid),
                 "partition_id": part_of.get(sid), "group": "test"}
            )  # fmt: skip
    _write_rows(ctx.paths.root / "evaluation" / "per_case.csv", out_rows)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CASE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CASE_COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def read_case_rows(path: Path) -> list[dict[str, Any]]:
    def num(v: str) -> float | None:
        if v in ("", "nan", "NaN"):
            return None
        return float(v)

    with path.open(newline="", encoding="utf-8") as fh:
        out = []
        for r in csv.DictReader(fh):
            row: dict[str, Any] = dict(r)
            for k in CASE_COLUMNS[6:]:
                row[k] = num(r[k])
            row["cluster"] = int(r["cluster"]) if r["cluster"] not in ("", "None") else None
            out.append(row)
        return out
