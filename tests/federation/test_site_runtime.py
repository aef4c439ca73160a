"""No module-level state holds a site's protocol, key or dataset (hostile-coordinator issue):
a site's ClientApp keeps them in its own SiteRuntime, one per app (node process)."""

from __future__ import annotations

import ast
from pathlib import Path

from support.flower import make_task, write_assignments, write_protocol

from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings
from securefed.federation.site_runtime import SiteRuntime

PACKAGE = Path(__file__).resolve().parents[2] / "securefed"
# Module-level caches of public values only, each with why it holds nothing of a site.
ALLOWED = {
    ("training/dpsgd.py", "_PLAN_CACHE"): "DP-SGD plans: functions of the protocol's public values",
    ("data/synth/writer.py", "_GRID"): "a synthesis worker's output grid (synthetic data only)",
    ("federation/site_runtime.py", "_ADOPTED"): "the runtimes unpickled in this process, one per "
    "app token, each with its own state (test_a_pickled_runtime_is_the_same_runtime_again)",
}


def _mutable_globals(path: Path) -> list[str]:
    out = []
    for node in ast.parse(path.read_text()).body:
        targets: list[ast.expr] = []
        value = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        # an empty container at import time is filled later: state (constants have content)
        mutable = (isinstance(value, ast.Dict) and not value.keys) or (
            isinstance(value, ast.List | ast.Set) and not value.elts
        ) or (isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("dict", "list",
                                                                            "set")
              and not value.args)  # fmt: skip
        if mutable:
            out += [t.id for t in targets if isinstance(t, ast.Name)]
    return out


def test_no_module_level_container_outside_the_allowed_public_caches() -> None:
    found = {
        (str(path.relative_to(PACKAGE)), name)
        for path in PACKAGE.rglob("*.py")
        for name in _mutable_globals(path)
        if name.lstrip("_").isupper()
    }
    assert found <= set(ALLOWED), sorted(found - set(ALLOWED))


def test_each_runtime_keeps_its_own_accepted_protocol_and_data(tmp_path: Path) -> None:
    proto = write_protocol(tmp_path, aggregation="fedavg")
    asg = write_assignments(tmp_path / "clusters.csv", {1: [("train", 0)] * 2 + [("val", 0)]})
    site = SiteSettings(1, str(tmp_path), str(proto), work_dir=str(tmp_path / "w"),
                        assignments=str(asg))  # fmt: skip
    first, second = SiteRuntime(), SiteRuntime()
    a = SiteClient(make_task(), site, runtime=first)
    SiteClient(make_task(), site, runtime=second)
    assert first.accepted(site) is a.accepted  # kept by the runtime that accepted it
    assert second.accepted(site) is not a.accepted  # never shared through a module
    data, n = a._data({"cluster": -1}, "train")
    assert n == 2
    assert (
        first.data((site.data_dir, 1, ("S01_000", "S01_001"), a.loaded.sha256), lambda: None)
        is data
    )


def test_training_seeds_come_from_the_sites_secret_under_a_deployment(tmp_path: Path) -> None:
    """Under a deployment protocol the coordinator neither knows nor chooses a site's training
    randomness: the seed is an HMAC of the site's own secret (created once, 0600); a simulation
    keeps the protocol's reproducible seed."""
    import os

    from securefed.federation.site_runtime import SECRET_FILE
    from securefed.protocol import load_protocol

    proto = write_protocol(tmp_path)
    sim = load_protocol(proto)
    runtime = SiteRuntime()
    site = SiteSettings(partition_id=2, data_dir="", protocol=str(proto))
    assert runtime.round_seed(site, str(tmp_path / "a"), sim, "global", 3) == (
        int(sim.protocol.training.seed) + 3000 + 2
    )
    # the same protocol as a deployment would declare it (mode only; no keys are needed here)
    study = sim.protocol.study.model_copy(update={"mode": "deployment"})
    changed = sim.protocol.model_copy(update={"study": study})
    dep = type(sim)(**{**sim.__dict__, "protocol": changed})
    a = runtime.round_seed(site, str(tmp_path / "a"), dep, "global", 3)
    assert a == runtime.round_seed(site, str(tmp_path / "a"), dep, "global", 3)  # stable
    assert a != runtime.round_seed(site, str(tmp_path / "a"), dep, "global", 4)
    assert a != runtime.round_seed(site, str(tmp_path / "b"), dep, "global", 3)  # another secret
    assert os.stat(tmp_path / "a" / SECRET_FILE).st_mode & 0o777 == 0o600


def test_a_pickled_runtime_is_the_same_runtime_again() -> None:
    """Flower's simulation pickles the ClientApp for every message to a Ray actor: a runtime
    comes back as the one instance of its token in the receiving process (its accepted protocols,
    data and round counters survive between messages), and two apps' runtimes stay apart."""
    import gc
    import pickle

    from securefed.federation import site_runtime

    first, second = SiteRuntime(), SiteRuntime()
    first._rounds[1] = {"global": 3}
    assert pickle.loads(pickle.dumps(first)) is first  # the creating process
    assert pickle.loads(pickle.dumps(second)) is second
    blob = pickle.dumps(first)
    token = first.token
    del first
    gc.collect()
    assert token not in site_runtime._CREATED  # as in another process: a new, adopted runtime
    adopted = pickle.loads(blob)
    adopted._rounds[1] = {"global": 4}
    again = pickle.loads(blob)
    assert again is adopted and again._rounds[1] == {"global": 4}  # the next message sees it
    assert again is not second and second._rounds == {}
    site_runtime._ADOPTED.pop(token)
