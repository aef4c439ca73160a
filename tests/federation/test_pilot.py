"""`securefed pilot` on a tiny federation (3 sites, 6 mm volumes, one round per phase): the
whole study as a deployment, each site in its own network namespace where the machine allows it
(else on loopback; test_pilot_secure.py runs on loopback), with a study CA, a TLS SuperLink with
SuperNode authentication, one SuperNode process per site and the coordinator driving every stage
over the network; then
checks that every stage ran over Flower messages, that each site kept its own cluster
assignment, that the evaluation released per-site counts only for test cases, that every
party's audit log verifies with its pinned key, that no process is left, and that a rerun
resumes without redoing a stage."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.deployment import groups_alive
from support.study import TINY, tiny_protocol

from securefed.clustering.assignments import read_assignments
from securefed.crypto.node_key import new_node_key
from securefed.federation.deployment import Deployment, flower_env
from securefed.study.pilot import run_pilot
from securefed.study.pilot_network import PilotNetwork, namespaces_unavailable


def _intrude(tmp_path: Path, out: dict[str, tuple[int | None, str]]) -> Callable[..., None]:
    """Two SuperNodes started from site-1's network against the running pilot: one with a node
    key the coordinator never registered, one without TLS. ``out``: each one's exit code (None:
    still running after 120 s) and log."""

    def intrude(dep: Deployment, net: PilotNetwork) -> None:
        key, _, _ = new_node_key(tmp_path / "intruder")
        node = [*net.prefix("site-1"), str(Path(sys.executable).with_name("flower-supernode")),
                "--max-retries", "1", "--isolation", "process", "--superlink",
                f"{dep.address}:{dep.port}", "--auth-supernode-private-key", str(key)]  # fmt: skip
        env = flower_env(tmp_path / "intruder" / "flwr-home")
        procs = {}
        tls_of = {"unregistered": ["--root-certificates", str(dep.ca_cert)],
                  "plaintext": ["--insecure"]}  # fmt: skip
        for i, (name, tls) in enumerate(tls_of.items()):
            log = tmp_path / "intruder" / f"{name}.log"
            with log.open("wb") as fh:  # a file, not a pipe: Flower's children may keep a pipe
                procs[name] = subprocess.Popen(
                    [*node, "--port", str(dep.port + 40 + i), *tls], env=env, stdout=fh,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        for name, proc in procs.items():
            try:
                code: int | None = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                code = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out[name] = (code, (tmp_path / "intruder" / f"{name}.log").read_text(errors="replace"))

    return intrude


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("flower-superlink") is None and not Path(
    __import__("sys").executable).with_name("flower-superlink").exists(),
    reason="needs Flower's flower-superlink")  # fmt: skip
def test_a_pilot_runs_every_stage_over_the_deployment(tmp_path: Path) -> None:
    proto = tiny_protocol(tmp_path)
    lines: list[str] = []
    intruders: dict[str, tuple[int | None, str]] = {}
    result = run_pilot(tmp_path / "pilot", str(proto), preset=TINY, stage_timeout_s=600,
                       on_started=_intrude(tmp_path, intruders), log=lines.append)  # fmt: skip
    # the pilot's own SuperLink refuses a node key nobody registered and a plaintext node, from
    # inside a site's network (its namespace where there is one)
    code, log = intruders["unregistered"]
    assert code not in (0, None) and "Exit Code: 305" in log, log[-2000:]
    assert intruders["plaintext"][0] not in (0, None), intruders["plaintext"][1][-2000:]
    study = tmp_path / "pilot" / "study"
    state = json.loads((study / "study.json").read_text())
    assert state["completed"] == ["features", "clustering", "training", "evaluation", "report"]
    # each site in its own network namespace where this machine allows it, else loopback
    unavailable = namespaces_unavailable()
    network = [line for line in lines if line.startswith("network: ")]
    if unavailable is None:
        assert network[0].startswith("network: network namespaces"), network
        assert "site-3 10." in network[0]
    else:
        assert network[0].startswith("network: loopback") and unavailable in network[0]
    # features: one sealed envelope per site came back as a Flower reply, and was collected
    inbox = study / "stages" / "features" / "inbox"
    assert sorted(p.name for p in inbox.iterdir()) == [
        f"partition-{p}.features.env" for p in (1, 2, 3)
    ]
    # clustering: each site assigned its own cases; the server's plan agrees with them
    server_rows = read_assignments(study / "clusters.csv")
    tests = 0
    for pid in (1, 2, 3):
        own = read_assignments(tmp_path / "pilot" / "sites" / f"site-{pid}" / "work"
                               / "clusters.csv")  # fmt: skip
        assert {r.partition_id for r in own} == {pid}
        assert sorted(own, key=str) == sorted(
            (r for r in server_rows if r.partition_id == pid), key=str
        )
        tests += sum(r.split == "test" for r in own)
    # evaluation: per-site counts and means, pooled over every test case
    methods = result.results["methods"]
    for method in ("fedavg", "cffl"):
        pooled = methods[method]["test"]
        assert pooled["num_test"] == tests
        assert 0.0 <= pooled["dice_mean"] <= 1.0
        assert {r["partition_id"] for r in methods[method]["per_site"]} == {1, 2, 3}
    # every party's log verifies with the key the protocol pins for it
    assert set(result.audit) == {"site-1", "site-2", "site-3", "server"}
    assert all(v.startswith("verified") for v in result.audit.values()), result.audit
    # what left each site: its release, training replies and test replies, nothing else
    for pid in (1, 2, 3):
        log = tmp_path / "pilot" / "sites" / f"site-{pid}" / "work" / "egress.jsonl"
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        kinds = {e["stage"] for e in entries}
        assert {"stage/features/get_properties", "stage/assign/get_properties",
                "stage/test/evaluate"} <= kinds  # fmt: skip
        assert all(k.split("/")[0] in ("stage", "training", "features") for k in kinds), kinds
        features = [e for e in entries if e["stage"] == "stage/features/get_properties"
                    and any(f["name"].endswith(".envelope") for f in e["fields"])]  # fmt: skip
        assert len(features) == 1, "the release left once"
    # the egress census declares every field that left any site (the stage replies included)
    from securefed.audit.egress import census
    from securefed.protocol import load_protocol
    from securefed.trust.egress_log import read_egress_log

    loaded = load_protocol(tmp_path / "pilot" / "protocol.toml")
    logs = {f"site-{p}": read_egress_log(tmp_path / "pilot" / "sites" / f"site-{p}" / "work"
                                         / "egress.jsonl") for p in (1, 2, 3)}  # fmt: skip
    assert census(logs, loaded)["findings"] == []
    # nothing left running
    pids = json.loads((study / "coordinator" / "nodes.json").read_text())
    assert pids  # the three node keys were registered
    assert groups_alive(result.process_groups) == []
    assert not (tmp_path / "pilot" / "network.json").exists()  # namespaces and bridge removed
    if unavailable is None:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        made = re.findall(r"netns (securefed-\w+-\d+)", network[0])
        assert len(made) == 3 and not any(ns in listed for ns in made)
    # a rerun of the finished pilot: every stage done, nothing redone, nothing started, the
    # audit logs verified again
    again: list[str] = []
    rerun = run_pilot(tmp_path / "pilot", str(proto), preset=TINY, log=again.append)
    assert sum("(resumed)" in line for line in again) == 5
    assert rerun.process_groups == [] and "network: none started" in "\n".join(again)
    assert rerun.results["methods"] == result.results["methods"]
    assert rerun.network == result.network and rerun.audit == result.audit
