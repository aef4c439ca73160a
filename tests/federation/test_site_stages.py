"""The study's stages at the site over the deployment (securefed.federation.site_stages), through
the site's whole ClientApp chain in-process (tests/support/hostile.py): a features request is
answered by the same sealed release as the file path, once; an assign request opens only the
pinned server's model, once, and keeps the clusters at the site; every malformed or foreign
request is refused with its code before any data is read; the egress guard lets a stage reply
carry nothing more than its declared field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flwr.app import Message, RecordDict
from flwr.common import GetPropertiesIns, MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from support.hostile import LAYOUT, Federation, pinned_federation
from support.study import TINY

from securefed.clustering.assignments import read_assignments
from securefed.crypto import generate_keys, load_private_keys, load_public_keys
from securefed.federation.guard import check_reply
from securefed.federation.site_rules import ReplyCode
from securefed.federation.site_stages import own_assignments
from securefed.protocol.egress import training_egress


def _query(fed: Federation, pid: int, config: dict) -> Message:
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config))
    return fed.send(pid, MessageTypeLegacy.GET_PROPERTIES, content)


def _props(reply: Message) -> dict:
    assert not reply.has_error(), reply.error
    return dict(compat.recorddict_to_getpropertiesres(reply.content).properties)


def _features_request(fed: Federation, keys: bytes | None = None) -> dict:
    server = keys if keys is not None else (fed.folder / "keys" / "server.pub.json").read_bytes()
    return {"protocol-hash": fed.loaded.sha256, "stage": "features", "server-keys": server}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """Three sites of a pinned protocol whose data folder holds a tiny real federation."""
    from securefed.data.synth import synthesize

    folder = tmp_path_factory.mktemp("stages") / "fed"
    federation = pinned_federation(folder)
    staging = folder.parent / "data"
    synthesize(staging, preset=TINY, seed=0)
    for entry in staging.iterdir():
        shutil.move(str(entry), str(folder / entry.name))
    return federation


def test_a_features_request_is_answered_by_the_sealed_release_once(fed: Federation) -> None:
    from securefed.server.collect import collect_features

    first = _props(_query(fed, 1, _features_request(fed)))
    assert set(first) == {"envelope"}
    again = _props(_query(fed, 1, _features_request(fed)))
    assert again["envelope"] == first["envelope"], "a second request resends, never re-releases"
    released = [e for e in fed.audit(1) if e["event"] == "features-released"]
    assert len(released) == 1
    inbox = fed.folder / "inbox"
    inbox.mkdir()
    (inbox / "site-1.features.env").write_bytes(first["envelope"])
    server = load_private_keys(fed.folder / "keys" / "server.key", role="server")
    collected = collect_features(
        inbox, fed.loaded, server, fed.folder / "collected", fed.folder / "server",
        site_public_keys=(load_public_keys(fed.folder / "keys" / "site-1.pub.json"),),
    )  # fmt: skip
    assert set(collected.partition_ids) == {1}
    assert len(collected.subject_ids) == TINY.institutions[0].n_cases
    # what left is what the site's egress log recorded
    log = [json.loads(line) for line in
           (Path(fed.sites[1].work_dir) / "egress.jsonl").read_text().splitlines()]  # fmt: skip
    assert any("features" in str(e.get("stage", "")) for e in log)


def test_assign_opens_the_pinned_model_once_and_keeps_the_clusters_at_the_site(
    fed: Federation,
) -> None:
    import numpy as np

    from securefed.clustering.io import read_feature_table
    from securefed.server.cluster_model import fit_cluster_model, seal_for_sites
    from securefed.server.collect import collect_features
    from securefed.transport import SendCounter

    inbox = fed.folder / "inbox-all"
    inbox.mkdir()
    for pid in LAYOUT:
        envelope = _props(_query(fed, pid, _features_request(fed)))["envelope"]
        (inbox / f"site-{pid}.env").write_bytes(envelope)
    server = load_private_keys(fed.folder / "keys" / "server.key", role="server")
    pubs = {f"site-{p}": load_public_keys(fed.folder / "keys" / f"site-{p}.pub.json")
            for p in LAYOUT}  # fmt: skip
    collect_features(inbox, fed.loaded, server, fed.folder / "all", fed.folder / "server-all",
                     site_public_keys=tuple(pubs.values()))  # fmt: skip
    table = read_feature_table(fed.folder / "all")
    fitted = fit_cluster_model(table, fed.loaded)
    sealed = seal_for_sites(fitted.model, server_keys=server, sites=pubs, loaded=fed.loaded,
                            counters=SendCounter(fed.folder / "counters"))  # fmt: skip
    keys = (fed.folder / "keys" / "server.pub.json").read_bytes()

    def assign(pid: int, envelope: bytes, server_keys: bytes = keys) -> Message:
        return _query(fed, pid, {"protocol-hash": fed.loaded.sha256, "stage": "assign",
                                 "server-keys": server_keys, "envelope": envelope})  # fmt: skip

    assert _props(assign(1, sealed["site-1"])) == {"assigned": True}
    rows = read_assignments(own_assignments(fed.sites[1].work_dir))
    mine = [i for i, p in enumerate(table.partition_ids) if p == 1]
    assert sorted(r.subject_id for r in rows) == sorted(table.subject_ids[i] for i in mine)
    server_view = fitted.model.assign(np.asarray(table.values)[mine])
    by_id = {r.subject_id: r.cluster for r in rows}
    assert [by_id[table.subject_ids[i]] for i in mine] == [int(c) for c in server_view], (
        "under a plain release the site's own assignment is the server's of its released rows"
    )
    replay = assign(1, sealed["site-1"])  # the same sealed bytes again
    assert replay.has_error() and replay.error.code == ReplyCode.SITE_FAILURE
    # a model sealed to site 2 by another (unpinned) server key
    other = generate_keys("server", "server")
    forged = seal_for_sites(fitted.model, server_keys=other, sites={"site-2": pubs["site-2"]},
                            loaded=fed.loaded, counters=SendCounter(fed.folder / "c2"))  # fmt: skip
    refused = assign(2, forged["site-2"])
    assert refused.has_error()
    assert not own_assignments(fed.sites[2].work_dir).exists()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"protocol-hash": "sha256:" + "0" * 64}, ReplyCode.WRONG_PROTOCOL),
        ({"lr": 0.5}, ReplyCode.INSTRUCTION_REFUSED),
        ({"stage": "everything"}, ReplyCode.INSTRUCTION_REFUSED),
        ({"server-keys": None}, ReplyCode.INSTRUCTION_REFUSED),
        ({"server-keys": b"{}"}, ReplyCode.INSTRUCTION_REFUSED),
        ({"server-keys": "other"}, ReplyCode.TRUST_REFUSED),
    ],
    ids=[
        "foreign-protocol",
        "an-instruction",
        "unknown-stage",
        "no-server-key",
        "not-a-key",
        "unpinned-server",
    ],  # fmt: skip
)
def test_a_malformed_or_foreign_stage_request_is_refused_before_any_data(
    tmp_path: Path, change: dict, code: ReplyCode
) -> None:
    fed = pinned_federation(tmp_path / "fed")  # no data at all: a refusal must not need any
    config = _features_request(fed)
    for key, value in change.items():
        if value is None:
            config.pop(key)
        elif value == "other":
            config[key] = json.dumps(generate_keys("server", "server").public.to_json()).encode()
        else:
            config[key] = value
    reply = _query(fed, 1, config)
    assert reply.has_error() and reply.error.code == code
    assert not (Path(fed.sites[1].work_dir) / "features").exists()
    assert [r["code"] for r in fed.refusals(1)] == [int(code)]


def test_a_features_request_under_secure_aggregate_is_refused(tmp_path: Path) -> None:
    from securefed.errors import InstructionRefusedError
    from securefed.federation.config import SiteSettings
    from securefed.federation.site_stages import StageSite, run_site_stage
    from securefed.protocol import load_protocol
    from securefed.protocol.shipped import shipped_protocol
    from securefed.trust import accept_unsigned_simulation

    loaded = load_protocol(shipped_protocol("demo-secure-aggregate"))
    site = SiteSettings(partition_id=1, data_dir=str(tmp_path), protocol="")
    where = StageSite(site, accept_unsigned_simulation(loaded), tmp_path, None)
    config = {"protocol-hash": loaded.sha256, "stage": "features", "server-keys": b"{}"}
    for stage in ("features", "assign"):
        with pytest.raises(InstructionRefusedError, match="secure-aggregate"):
            run_site_stage(where, stage, {**config, "stage": stage, "envelope": b"x"})
    assert list(tmp_path.iterdir()) == []


def _reply(fed: Federation, request_config: dict, props: dict) -> tuple[Message, Message]:
    from flwr.common import Code, GetPropertiesRes, Status

    request = fed.message(
        1,
        MessageTypeLegacy.GET_PROPERTIES,
        compat.getpropertiesins_to_recorddict(GetPropertiesIns(request_config)),
    )
    res = GetPropertiesRes(Status(Code.OK, "Success"), props)
    content: RecordDict = compat.getpropertiesres_to_recorddict(res)
    return request, Message(content, reply_to=request)


@pytest.mark.parametrize(
    ("stage", "props", "ok"),
    [
        ("features", {"envelope": b"sealed"}, True),
        ("features", {"envelope": b"sealed", "rows": 5}, False),
        ("features", {"envelope": "not bytes"}, False),
        ("assign", {"assigned": True}, True),
        ("assign", {"assigned": True, "k": 2}, False),
        ("assign", {"clusters": b"1,0,1"}, False),
        ("everything", {"envelope": b"sealed"}, False),
    ],
)
def test_the_guard_lets_a_stage_reply_carry_its_declared_field_only(
    tmp_path: Path, stage: str, props: dict, ok: bool
) -> None:
    fed = pinned_federation(tmp_path / "fed")
    request, reply = _reply(fed, {"stage": stage}, props)
    problems = check_reply(request, reply, training_egress(fed.loaded.protocol), secagg=True)
    assert (problems == []) is ok, problems


def test_a_finite_epsilon_site_sends_no_test_metric(tmp_path: Path) -> None:
    """Under a protocol that claims a finite epsilon the test stage follows the validation
    rule: a zero count and no metric leave the site (the egress guard holds it to that)."""
    from flwr.app.message_type import MessageType
    from flwr.common import EvaluateIns, ndarrays_to_parameters

    def client_dp(data: dict) -> None:
        data["privacy"]["total_epsilon"] = 8.0
        data["training"]["client_dp"] = {"enabled": True, "epsilon": 8.0, "max_sites": 3,
                                         "clip_norm": 1.0}  # fmt: skip

    fed = pinned_federation(tmp_path / "fed", edit=client_dp)
    config = {"protocol-hash": fed.loaded.sha256, "stage": "test", "cluster": -1}
    ins = EvaluateIns(ndarrays_to_parameters(fed.start_weights()), config)
    reply = fed.send(1, MessageType.EVALUATE, compat.evaluateins_to_recorddict(ins, True))
    assert not reply.has_error(), reply.error
    res = compat.recorddict_to_evaluateres(reply.content)
    assert res.num_examples == 0 and res.loss == 0.0
    assert set(res.metrics) == {"partition-id"}
    assert [e["event"] for e in fed.audit(1)][-2:] == ["test-requested", "head"]
    extra = {**config, "lr": 0.1}
    ins = EvaluateIns(ndarrays_to_parameters(fed.start_weights()), extra)
    refused = fed.send(1, MessageType.EVALUATE, compat.evaluateins_to_recorddict(ins, True))
    assert refused.has_error() and refused.error.code == ReplyCode.INSTRUCTION_REFUSED
