"""The evaluation and report stages on their own (no Flower): a tiny federation on disk,
clusters.csv and phase checkpoints written by hand, then per_case.csv, results.json and
report.html checked against them."""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from support.study import tiny_protocol

from securefed.clustering.assignments import Assignment, write_assignments
from securefed.federation.task import default_task
from securefed.fileio import jsonable, read_json, write_json_atomic
from securefed.protocol import file_sha256, load_protocol
from securefed.study.context import StudyContext
from securefed.study.evaluation_stage import read_case_rows, run_evaluation
from securefed.study.paths import StudyPaths
from securefed.study.report_stage import build_results, run_report
from securefed.study.training_stage import _curve, site_data
from securefed.training.checkpoints import save_weights


def _weights(loaded, seed: int) -> list[np.ndarray]:
    torch.manual_seed(seed)
    task = default_task()
    return task.get_weights(task.build_model(loaded.protocol.training))


def _pin_public_start(path: Path, weights: list[np.ndarray]) -> None:
    """Pin ``weights`` (as sent: shared tensors once) as the protocol's training.initial_weights
    (public.npz beside it, in state_dict order as `securefed pretrain` writes it)."""
    from securefed.training.local import get_weights

    task = default_task()
    model = task.build_model(load_protocol(path).protocol.training)
    task.set_weights(model, weights)
    save_weights(path.parent / "public.npz", get_weights(model))
    data = tomllib.loads(path.read_text())
    data["training"]["initial_weights"] = {
        "file": "public.npz", "sha256": file_sha256(path.parent / "public.npz")
    }  # fmt: skip
    path.write_bytes(tomli_w.dumps(data).encode())


def _context(tiny_federation: Path, tmp_path: Path, *, public: bool) -> StudyContext:
    """A run folder whose clustering and training stages are 'done': cluster = partition % 2,
    the global model and cluster 0's finetuned model saved, cluster 1 kept the global one.
    ``public``: the protocol pins cluster 0's weights as its public start."""
    path = tiny_protocol(tmp_path, held_out=(3,), baselines=("fedavg", "cffl"))
    if public:
        _pin_public_start(path, _weights(load_protocol(path), 1))
    loaded = load_protocol(path)
    paths = StudyPaths(tmp_path / "run")
    logs: list[str] = []
    context = StudyContext.build(
        loaded, tiny_federation, paths, truth=tiny_federation / "truth.csv", workers=1,
        log=logs.append,
    )  # fmt: skip
    rows = [
        Assignment(sid, pid, str(context.splits[sid]), pid % 2)
        for sid, pid in context.federation.partition_of.items()
    ]
    write_assignments(paths.clusters, rows)
    save_weights(paths.training / "global" / "best.npz", _weights(loaded, 0))
    save_weights(paths.training / "cluster-0" / "best.npz", _weights(loaded, 1))
    phases = {
        "global": {"best_round": 1, "best_score": 0.1, "weights": "training/global/best.npz",
                   "history": [{"round": 1, "val_dice": 0.1, "seconds": 1.0}]},
        "clusters": {
            "0": {"status": "finetuned", "reason": "best round 1 of 1", "sites": {"2": 3},
                  "weights": "training/cluster-0/best.npz",
                  "history": [{"round": 0, "val_dice": 0.1, "seconds": 0.5}]},
            "1": {"status": "fallback-global", "reason": "1 site(s) hold train cases",
                  "sites": {"1": 3}, "weights": "training/global/best.npz", "history": []},
        },
    }  # fmt: skip
    write_json_atomic(paths.phases, phases)
    write_json_atomic(paths.clustering / "clustering.json", {"algorithm": "gmm", "k": 2})
    write_json_atomic(
        paths.state,
        {"protocol": loaded.sha256, "created_at": "now", "completed": {"features": {"seconds": 2}}},
    )
    return context


@pytest.fixture
def ctx(tiny_federation: Path, tmp_path: Path) -> StudyContext:
    return _context(tiny_federation, tmp_path, public=False)


def test_evaluation_scores_the_pinned_public_start(tiny_federation: Path, tmp_path: Path) -> None:
    """A protocol pinning public weights gets a `public-start` row per test case: those weights,
    untrained (here cluster 0's model, so its cases score as CFFL's do); first in the summary."""
    context = _context(tiny_federation, tmp_path, public=True)
    run_evaluation(context)
    rows = read_case_rows(context.paths.per_case)
    by = {(r["method"], r["subject_id"]): r for r in rows}
    cffl = [r for r in rows if r["method"] == "cffl"]
    public = [r for r in rows if r["method"] == "public-start"]
    assert {r["subject_id"] for r in public} == {r["subject_id"] for r in cffl}
    for r in (r for r in cffl if r["cluster"] == 0):
        assert by[("public-start", r["subject_id"])]["dice_mean"] == r["dice_mean"]
    results = run_report(context)
    assert list(results["segmentation"]["methods"]) == ["public-start", "fedavg", "cffl"]


def test_evaluation_scores_each_test_case_with_its_clusters_models(ctx: StudyContext) -> None:
    run_evaluation(ctx)
    rows = read_case_rows(ctx.paths.per_case)
    cluster_of = {a: p % 2 for a, p in ctx.federation.partition_of.items()}
    tests = {
        s for s, sp in ctx.splits.items() if sp == "test" and ctx.federation.partition_of[s] != 3
    }
    unseen = {s for s, p in ctx.federation.partition_of.items() if p == 3}
    for method in ("fedavg", "cffl"):
        mine = [r for r in rows if r["method"] == method]
        assert {r["subject_id"] for r in mine if r["group"] == "test"} == tests
        assert {r["subject_id"] for r in mine if r["group"] == "unseen"} == unseen  # all splits
        assert all(r["cluster"] == cluster_of[r["subject_id"]] for r in mine)
        assert all(r["site"] == f"site-{r['partition_id']}" for r in mine)
        assert all(0.0 <= r["dice_mean"] <= 1.0 for r in mine)
    by = {(r["method"], r["subject_id"]): r for r in rows}
    # Cluster 1 kept the global model: CFFL and FedAvg score those cases identically.
    for sid in (s for s in tests | unseen if cluster_of[s] == 1):
        assert by[("cffl", sid)]["dice_mean"] == by[("fedavg", sid)]["dice_mean"]


def test_report_stage_summarises_what_the_stages_wrote(ctx: StudyContext) -> None:
    run_evaluation(ctx)
    results = run_report(ctx)
    text = ctx.paths.results.read_text()
    assert "NaN" not in text
    assert read_json(ctx.paths.results)["protocol"]["release_mode"] == "plain"
    rows = read_case_rows(ctx.paths.per_case)
    seen = [r for r in rows if r["group"] == "test"]
    methods = results["segmentation"]["methods"]
    assert list(methods) == ["fedavg", "cffl"]
    for name, res in methods.items():
        mine = [r["dice_wt"] for r in seen if r["method"] == name]
        assert res["n_cases"] == len(mine)
        assert res["mean"]["WT"] == pytest.approx(float(np.mean(mine)))
        assert set(res["per_scanner"]) <= {"siemens-3t", "legacy-1.5t"}
    assert results["segmentation"]["unseen"]["fedavg"]["n_cases"] == 5
    assert results["segmentation"]["fallbacks"] == [
        {"cluster": "1", "reason": "fallback-global: 1 site(s) hold train cases"}
    ]
    sites = {s["site"]: s for s in results["data"]["sites"]}
    with ctx.paths.clusters.open() as fh:
        listed = list(csv.DictReader(fh))
    for site, info in sites.items():
        pid = int(site.split("-")[1])
        assert info["train"] == sum(r["partition_id"] == str(pid) and r["split"] == "train"
                                    for r in listed)  # fmt: skip
        assert info["role"] == ("unseen" if pid == 3 else "training")
    assert results["privacy"]["notes"][0].startswith("Feature release 'plain'")
    assert set(results["training_curves"]) == {"global", "cluster 0"}
    page = (ctx.paths.root / "report.html").read_text()
    assert "cluster 1: fallback-global" in page
    assert "site-3" in page
    again = jsonable(build_results(ctx)["segmentation"])  # NaN (undefined HD95) -> None
    assert again == jsonable(results["segmentation"])


def test_training_stage_helpers(ctx: StudyContext) -> None:
    """Each training site's own prepared cases by split; the curve keeps validated rounds."""
    from securefed.clustering.assignments import read_assignments

    data = site_data(ctx, read_assignments(ctx.paths.clusters))
    assert set(data) == {"site-1", "site-2"}  # site-3 is held out
    for site, d in data.items():
        pid = int(site.split("-")[1])
        want = sorted(s for s, p in ctx.federation.partition_of.items()
                      if p == pid and ctx.splits[s] == "train")  # fmt: skip
        assert sorted(c["subject_id"] for c in d.train) == want
    curve = _curve([{"round": 1, "val": {"num_val": 2, "dice_mean": 0.4}, "seconds": 3},
                    {"round": 2, "val": {"num_val": 0}}])  # fmt: skip
    assert curve == [{"round": 1, "val_dice": 0.4, "seconds": 3},
                     {"round": 2, "val_dice": None, "seconds": None}]  # fmt: skip


def test_unknown_held_out_partition_is_refused(tiny_federation: Path, tmp_path: Path) -> None:
    """In simulation without [[sites]], a held-out partition must exist in the partition file."""
    from securefed.errors import ProtocolError

    loaded = load_protocol(tiny_protocol(tmp_path, held_out=(9,)))
    with pytest.raises(ProtocolError, match=r"held_out_partitions: \[9\]"):
        StudyContext.build(
            loaded, tiny_federation, StudyPaths(tmp_path / "run"), truth=None, workers=1,
            log=print,
        )  # fmt: skip
