"""The DP test summary over the deployment (evaluation.dp_summary): through each site's whole
ClientApp chain in-process and the coordinator's stage server. The sites keep their test
scores (sending a zero count), then answer one ``dp-test`` request with a masked vector that
opens only as the noised total; a coordinator that asks again, asks too few sites, leaves a
site's own key out or asks before the site scored its cases is refused before any charge."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.common import EvaluateIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from support.flower import write_assignments
from support.hostile import Federation, InProcessGrid, pinned_federation

from securefed.crypto.masking import MaskingParty, unmask_sum
from securefed.federation.site_rules import ReplyCode
from securefed.federation.site_secure import decode_signed, encode_directory
from securefed.federation.site_test_summary import SCORES_DIR
from securefed.privacy.test_summary import (
    RELEASE_ID,
    plan_test_summary,
    site_vector,
    summary_from_total,
)

# each site: train cases of a cluster and test cases of both clusters
TEST_LAYOUT = {
    1: [("train", 0)] * 2 + [("test", 0), ("test", 1)],
    2: [("train", 1)] * 2 + [("test", 1)] * 2,
    3: [("train", 0)] + [("test", 0)] * 3,
}
SITES = tuple(TEST_LAYOUT)


def _summary_protocol(data: dict[str, Any]) -> None:
    """A finite-epsilon protocol (client-level DP) with a DP test summary at a large epsilon
    (little noise, so the test can see the total)."""
    data["privacy"]["total_epsilon"] = 58.0
    data["training"]["client_dp"] = {"enabled": True, "epsilon": 8.0, "max_sites": 3,
                                     "clip_norm": 1.0}  # fmt: skip
    data["evaluation"] = {"dp_summary": {"epsilon": 50.0, "delta": 1e-6, "min_sites": 3}}


def _federation(tmp_path: Path) -> Federation:
    fed = pinned_federation(tmp_path / "fed", edit=_summary_protocol)
    write_assignments(fed.folder / "clusters.csv", TEST_LAYOUT)
    return fed


def _score(fed: Federation, pid: int, cluster: int) -> Message:
    config = {"protocol-hash": fed.loaded.sha256, "stage": "test", "cluster": cluster}
    ins = EvaluateIns(ndarrays_to_parameters(fed.start_weights()), config)
    return fed.send(pid, MessageType.EVALUATE, compat.evaluateins_to_recorddict(ins, True))


def _directory(fed: Federation, sites: tuple[int, ...] = SITES) -> bytes:
    entries = {}
    for pid in sites:
        props = Federation.props(fed.query(pid, {"protocol-hash": fed.loaded.sha256,
                                         "stage": "secure-keys"}))  # fmt: skip
        entries[f"site-{pid}"] = (props["masking-key"], decode_signed(props["signed"]))
    return encode_directory(entries)


def _dp_test(fed: Federation, pid: int, directory: bytes) -> Message:
    return fed.query(pid, {"protocol-hash": fed.loaded.sha256, "stage": "dp-test",
                             "directory": directory})  # fmt: skip


def _charges(fed: Federation, pid: int) -> int:
    return sum(e["event"] == "budget-spend" for e in fed.audit(pid))


def _kept(fed: Federation, pid: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scores the site kept (read here only to check the opened total)."""
    folder = Path(fed.sites[pid].work_dir) / SCORES_DIR
    by_model = {int(p.name.split(".model")[1].split(".")[0]): json.loads(p.read_text())
                for p in folder.iterdir()}  # fmt: skip
    tests = {f"S{pid:02d}_{i:03d}": c for i, (split, c) in enumerate(TEST_LAYOUT[pid])
             if split == "test"}  # fmt: skip
    return ({s: by_model[-1][s] for s in tests}, {s: by_model[c][s] for s, c in tests.items()})


def test_a_dp_summary_opens_only_as_the_noised_total(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    directory = _directory(fed)
    early = _dp_test(fed, 1, directory)  # before the site scored its test cases
    assert early.has_error() and early.error.code == ReplyCode.INSTRUCTION_REFUSED
    for pid in SITES:
        for cluster in (-1, 0, 1):
            reply = _score(fed, pid, cluster)
            assert not reply.has_error(), reply.error
            res = compat.recorddict_to_evaluateres(reply.content)
            assert res.num_examples == 0 and set(res.metrics) == {"partition-id"}  # nothing sent
    few = _directory(fed, (1, 2))  # under min_sites = 3
    refused = _dp_test(fed, 1, few)
    assert refused.has_error() and refused.error.code == ReplyCode.INSTRUCTION_REFUSED
    doc = json.loads(directory)  # site-1's entry with another masking key than its own
    doc["site-1"]["key"] = base64.b64encode(MaskingParty.generate("site-1").public_key).decode()
    refused = _dp_test(fed, 1, json.dumps(doc, sort_keys=True).encode())
    assert refused.has_error() and refused.error.code == ReplyCode.INSTRUCTION_REFUSED
    assert all(_charges(fed, p) == 0 for p in SITES)

    masked = {f"site-{p}": np.frombuffer(Federation.props(_dp_test(fed, p, directory))["masked"],
                                         dtype="<u8").copy() for p in SITES}  # fmt: skip
    one = masked["site-1"]
    assert one.size == 7 and len(np.unique(one)) == 7, "a single masked vector looks uniform"
    total = unmask_sum(masked, sorted(masked))
    true = sum(site_vector(*_kept(fed, p)) for p in SITES)
    plan = plan_test_summary(fed.loaded.protocol)
    assert plan is not None
    assert true[-1] == 7  # the test cases of the three sites (2 + 2 + 3)
    assert np.all(np.abs(total - true) < 6 * plan.sigma)
    assert not np.allclose(total, true, atol=1e-9), "noise was added"
    doc = summary_from_total(total, plan, len(SITES))
    assert doc["fedavg"]["num_test"] == round(float(total[-1]))
    assert 0.0 <= doc["cffl"]["dice_mean"] <= 1.0
    from securefed.privacy.accounting import event_to_json
    from securefed.privacy.ledger import read_ledger

    for pid in SITES:
        assert _charges(fed, pid) == 1
        assert fed.audit(pid)[-1]["event"] == "head"  # the step closed with a signed head
        ledger = read_ledger(Path(fed.sites[pid].work_dir) / "ledger.jsonl")
        assert event_to_json(ledger.charges[RELEASE_ID].event) == event_to_json(plan.event())
    again = _dp_test(fed, 2, directory)  # a second summary would let the server subtract
    assert again.has_error() and again.error.code == ReplyCode.INSTRUCTION_REFUSED
    assert _charges(fed, 2) == 1


class _SuperLinkGrid(InProcessGrid):
    """Delivers the stage server's messages as a SuperLink would (run id, message id, source)."""

    def get_node_ids(self) -> list[int]:  # type: ignore[override]
        return [100 + p for p in SITES]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        return [
            self.fed.deliver(self.fed.message(int(m.metadata.dst_node_id) - 100,
                                              m.metadata.message_type, m.content))
            for m in messages
        ]  # fmt: skip


@pytest.fixture
def server_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set before it builds messages."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _StageDeployment:
    """The coordinator's deployment, in-process: each stage runs the stage server's ServerApp
    logic against the sites' ClientApps."""

    def __init__(self, fed: Federation) -> None:
        self.grid = _SuperLinkGrid(fed)

    def submit(self, cfg: Any) -> None:
        from securefed.federation.stage_server import run_server_stage

        with contextlib.suppress(Exception):  # the coordinator reads the outcome: state.json
            run_server_stage(self.grid, cfg)


@pytest.mark.usefixtures("server_process")
def test_the_coordinator_opens_the_summary_once_and_reports_it(tmp_path: Path) -> None:
    """``securefed federation run``'s evaluation under a DP summary protocol: the test stage
    (scores kept at the sites), the masking keys, one dp-test stage, the opened summary; a
    resumed coordinator does not ask again."""
    from securefed.crypto import generate_keys
    from securefed.study.federation_run import _dp_summary, _evaluation_release
    from securefed.training.checkpoints import save_weights

    fed = _federation(tmp_path)
    out = tmp_path / "coordinator"
    folder = out / "stages" / "test"
    folder.mkdir(parents=True)
    save_weights(folder / "model.npz", fed.start_weights())
    (folder / "test-models.json").write_text(json.dumps(
        [{"method": "fedavg", "cluster": -1, "weights": "model.npz"}]
        + [{"method": "cffl", "cluster": c, "weights": "model.npz"} for c in (0, 1)]))  # fmt: skip
    from securefed.study.federation_run import _stage_config

    deployment = _StageDeployment(fed)
    deployment.submit(_stage_config(fed.loaded, folder, "test", list(SITES), 30.0))
    assert json.loads((folder / "state.json").read_text())["status"] == "completed"
    server = generate_keys("server", "server")
    _dp_summary(fed.loaded, out, deployment, list(SITES), 30.0, server)  # type: ignore[arg-type]
    summary = json.loads((out / "stages" / "dp-test" / "summary.json").read_text())
    assert "error" not in summary, summary
    assert summary["fedavg"]["sites"] == 3 and summary["fedavg"]["dp"]["epsilon"] == 50.0
    assert abs(summary["fedavg"]["dp"]["noised_count"] - 7) < 6 * summary["fedavg"]["dp"][
        "sigma_sum"]  # fmt: skip
    assert "DP test summary over 3 training sites" in _evaluation_release([], summary)
    before = [_charges(fed, p) for p in SITES]
    _dp_summary(fed.loaded, out, deployment, list(SITES), 30.0, server)  # type: ignore[arg-type]
    assert [_charges(fed, p) for p in SITES] == before == [1, 1, 1]


@pytest.mark.usefixtures("server_process")
def test_too_few_training_sites_give_no_summary_and_no_charge(tmp_path: Path) -> None:
    sites = (1, 2)
    from securefed.crypto import generate_keys
    from securefed.study.federation_run import _dp_summary

    fed = _federation(tmp_path)
    out = tmp_path / "coordinator"
    server = generate_keys("server", "server")
    _dp_summary(fed.loaded, out, _StageDeployment(fed), list(sites), 30.0, server)  # type: ignore[arg-type]
    summary = json.loads((out / "stages" / "dp-test" / "summary.json").read_text())
    assert "min_sites" in summary["error"]
    assert all(_charges(fed, p) == 0 for p in SITES)


def test_a_held_out_institution_takes_no_part_in_the_summary(tmp_path: Path) -> None:
    """A held-out institution (data.held_out_partitions) trained nowhere and is scored apart as
    unseen: it refuses the dp-test request before anything is charged."""

    def held_out(data: dict[str, Any]) -> None:
        _summary_protocol(data)
        data.setdefault("data", {})["held_out_partitions"] = [3]

    fed = pinned_federation(tmp_path / "fed", edit=held_out)
    write_assignments(fed.folder / "clusters.csv", TEST_LAYOUT)
    refused = _dp_test(fed, 3, _directory(fed, (1, 2)))
    assert refused.has_error() and refused.error.code == ReplyCode.INSTRUCTION_REFUSED
    keys = fed.query(3, {"protocol-hash": fed.loaded.sha256, "stage": "secure-keys"})
    assert keys.has_error() and keys.error.code == ReplyCode.INSTRUCTION_REFUSED
    assert _charges(fed, 3) == 0
