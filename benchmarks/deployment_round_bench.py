"""What a deployment round costs over a simulation round (3 sites, SecAgg+, the tests' tiny 3D
model on 8^3 volumes, so the figures are the engines' overhead, not training).

    .venv/bin/python benchmarks/deployment_round_bench.py [--rounds 4] [--out FILE.json]
        [--engines simulation,deployment,deployment-flower-executor]

Engines:
- ``simulation``: Flower's simulation engine (Ray), one process.
- ``deployment``: loopback SuperLink (TLS, node authentication) and one SuperNode per site
  started by ``securefed site supernode``: securefed's site executor runs every message in one
  long-lived process (torch imported once).
- ``deployment-flower-executor``: the same SuperLink and node keys, SuperNodes started directly
  with Flower's default executor (a fresh ``flwr-clientapp`` process per message, importing
  torch each time): what securefed's deployment cost before its own executor.

Per engine: each round's seconds from the ServerApp's state.json (round 1 includes warm-up).
Results: results/deployment.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.deployment import make_tls, study  # noqa: E402
from support.flower import make_task, write_assignments  # noqa: E402

from securefed.federation.config import SiteSettings  # noqa: E402
from securefed.federation.deployment import Deployment, LocalSite  # noqa: E402
from securefed.federation.phase import phase_config, run_phase  # noqa: E402
from securefed.protocol import load_protocol  # noqa: E402

LAYOUT = {p: [("train", 0)] * 2 + [("val", 0)] for p in (1, 2, 3)}
ENGINES = ("simulation", "deployment", "deployment-flower-executor")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rounds(out: Path) -> list[float]:
    state = json.loads((out / "state.json").read_text())
    return [float(h["seconds"]) for h in state["history"]]


def _protocol(tmp: Path, rounds: int) -> Path:
    return study(tmp, n_sites=3, rounds=rounds)[0]


def simulation(tmp: Path, rounds: int) -> list[float]:
    proto = _protocol(tmp, rounds)
    asg = write_assignments(tmp / "clusters.csv", LAYOUT)
    # a deployment protocol: each site reads its own configuration (SITE.toml), as a SuperNode does
    sites = [
        SiteSettings(
            p,
            str(tmp),
            str(proto),
            assignments=str(asg),
            site_config=str(tmp / "configs" / f"site-{p}.toml"),
        )
        for p in LAYOUT
    ]
    cfg = phase_config(load_protocol(proto), out_dir=tmp / "sim", sites={1: 2, 2: 2, 3: 2},
                       assignments=asg)  # fmt: skip
    run_phase(cfg, sites, engine="simulation", task=make_task())
    return _rounds(tmp / "sim")


def deployment(tmp: Path, rounds: int, flower_executor: bool) -> list[float]:
    proto = _protocol(tmp, rounds)
    configs = {f"site-{p}": tmp / "configs" / f"site-{p}.toml" for p in LAYOUT}
    ca, cert, key = make_tls(tmp / "tls")
    env = {
        "SECUREFED_FLOWER_TASK": "support.flower:make_task",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    local = []
    for p in LAYOUT:
        sid = f"site-{p}"
        (tmp / sid).mkdir(exist_ok=True)
        asg = write_assignments(tmp / sid / "clusters.csv", LAYOUT)
        local.append(LocalSite(sid, proto, configs[sid], tmp / "nodes" / sid / "node.key", tmp,
                               tmp / sid, asg, p))  # fmt: skip
    dep = Deployment(work_dir=tmp / "deploy", port=_free_port(), ca_cert=ca, server_cert=cert,
                     server_key=key, supernode_env=env, run_timeout_s=1800,
                     local_sites=[] if flower_executor else local)  # fmt: skip
    cfg = phase_config(load_protocol(proto), out_dir=tmp / "dep", sites={1: 2, 2: 2, 3: 2},
                       assignments=local[0].assignments or tmp)  # fmt: skip
    dep.start()
    try:
        if flower_executor:
            bindir = Path(sys.executable).parent
            for i, site in enumerate(local):
                nid = dep.register_node(site.node_key.with_name("node.pub"))
                dep.node_sites[nid] = site.partition_id
                settings = SiteSettings(site.partition_id, str(tmp), str(proto),
                                        work_dir=str(site.work_dir),
                                        assignments=str(site.assignments),
                                        site_config=str(site.site_config))  # fmt: skip
                dep._spawn(
                    [str(bindir / "flower-supernode"), "--root-certificates", str(ca),
                     "--superlink", f"127.0.0.1:{dep.port}", "--port", str(dep.port + 20 + i),
                     "--auth-supernode-private-key", str(site.node_key),
                     "--node-config", settings.to_node_config()],
                    f"flower-supernode-{site.site_id}.log", dict(dep.env(), **env),
                )  # fmt: skip
        run_phase(cfg, [], engine="deployment", deployment=dep)
    finally:
        dep.stop()
    return _rounds(tmp / "dep")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/deployment.json")
    ap.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma-separated subset of: " + ", ".join(ENGINES),
    )
    args = ap.parse_args()
    wanted = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(wanted) - set(ENGINES))
    if unknown:
        ap.error(f"--engines: unknown {unknown}")
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "rounds": args.rounds,
    }
    runs = {
        "simulation": lambda t: simulation(t, args.rounds),
        "deployment": lambda t: deployment(t, args.rounds, flower_executor=False),
        "deployment-flower-executor": lambda t: deployment(t, args.rounds, True),
    }
    for name in wanted:
        fn = runs[name]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            secs = fn(Path(tmp))
            wall = time.monotonic() - t0
        later = secs[1:] or secs
        results[name] = {"round_seconds": secs, "mean_after_first": sum(later) / len(later),
                         "phase_wall_s": wall}  # fmt: skip
        print(name, json.dumps(results[name]), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
