"""``securefed pilot``: a study as a real deployment on this machine, in one command.

Everything a hospital network has is made here, each party in its own folder under OUT:

- ``data/``: the synthetic federation (the demo preset), and ``sites/<id>/data/``: each site's own
  cases and partition file only (hard links, else copies);
- keys: the server's and each site's signing and encryption keys (``keys/``,
  ``sites/<id>/keys/``), each site's SuperNode key (``sites/<id>/node/``; the coordinator gets
  the public half in ``node-keys/``), a governance (board) key, and a study CA with the
  SuperLink's certificate (``tls/``);
- ``protocol.toml``: the protocol made a deployment protocol (``securefed protocol new
  --deployment``'s skeleton, every key pinned, the installed app bundle approved), signed by the
  board; each site gets its own copy and a ``SITE.toml`` trusting the board and allowing the
  server as a recipient, with the policy relaxed only as far as the protocol needs (said in the
  output: a hospital's own SITE.toml decides that);
- processes: a SuperLink (TLS, SuperNode authentication) and one SuperNode per site started with
  the site's own launcher (``securefed site supernode``), each in its own process group with its
  own work folder; each site in its own network namespace with its own address, reaching only
  the SuperLink's, where the machine allows it (root, iproute2), else all on loopback, said in
  the output (:mod:`securefed.study.pilot_network`);
- the coordinator (``securefed federation run``, :mod:`securefed.study.federation_run`) drives
  every stage into ``study/``; then each party's audit log is verified with its pinned key.

Every process started is stopped at the end, also on failure, Ctrl-C or SIGTERM. A rerun on OUT
resumes after the last completed stage; once every stage is done a rerun starts nothing (no
network, no process): it verifies each party's audit log again and rewrites the report.
"""

from __future__ import annotations

import os
import shutil
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefed.errors import ConfigError
from securefed.protocol import LoadedProtocol
from securefed.study.pilot_network import (
    NetworkMode,
    PilotNetwork,
    check_mode,
    clean_leftovers,
    open_network,
)

if TYPE_CHECKING:
    from securefed.federation.deployment import Deployment

__all__ = ["PilotResult", "run_pilot"]

Log = Callable[[str], None]
SERVER_ID = "server"


@dataclass(frozen=True)
class PilotResult:
    """Where the pilot ran, what the study found, and each party's audit-log verification."""

    out: Path
    results: dict[str, Any]
    network: str
    audit: dict[str, str] = field(default_factory=dict)
    relaxed: list[str] = field(default_factory=list)
    process_groups: list[int] = field(default_factory=list)  # every process started, stopped


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _server_tls(tls: Path, host: str) -> tuple[Path, Path]:
    """The SuperLink's certificate for ``host`` (issued by the pilot's study CA, once per
    address: a namespace network's address changes from run to run)."""
    if host == "127.0.0.1":
        return tls / "server.pem", tls / "server.key"
    from securefed.crypto.study_ca import issue_server_cert

    folder = tls / f"superlink-{host}"
    if not all((folder / name).is_file() for name in ("server.pem", "server.key")):
        shutil.rmtree(folder, ignore_errors=True)  # a half-written one
        folder.mkdir(parents=True)
        issue_server_cert(tls / "ca.pem", tls / "ca.key", folder, [host])
    return folder / "server.pem", folder / "server.key"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _site_data(data: Path, partitioning: str, pid: int, dest: Path) -> int:
    """Give one site its own cases and the rows of the partition file that are its own."""
    import csv

    src = data / f"{partitioning}.csv"
    with src.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    from securefed.data.partitions import PARTITION_COLUMNS

    header, body = rows[0], rows[1:]
    part, sid = (header.index(c) for c in PARTITION_COLUMNS)  # the file's own column order
    mine = [r for r in body if r and int(r[part]) == pid]
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / src.name).open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([header, *mine])
    for row in mine:
        case = data / row[sid]
        for path in sorted(case.rglob("*")):
            if path.is_file() and not (dest / path.relative_to(data)).exists():
                _link_or_copy(path, dest / path.relative_to(data))
    return len(mine)


def _partitions(data: Path, partitioning: str) -> list[int]:
    from securefed.data.partitions import read_partitioning

    return sorted(set(read_partitioning(data / f"{partitioning}.csv").values()))


def _pilot_policy(loaded: LoadedProtocol, server_fp: str) -> tuple[Any, list[str]]:
    """The strictest site policy relaxed only where the protocol needs it (and what was)."""
    import math

    from securefed.trust import SitePolicy, policy_violations

    proto = loaded.protocol
    policy = SitePolicy(allowed_recipient_keys=(server_fp,))
    changes: dict[str, Any] = {}
    if proto.release.mode in policy.forbidden_release_modes:
        changes["forbidden_release_modes"] = tuple(
            m for m in policy.forbidden_release_modes if m != proto.release.mode
        )
    if proto.training.dp_training is None:
        changes["require_dp_training"] = False
    if proto.release.mode == "plain" or proto.training.dp_training is None:
        changes["allow_plain_stages"] = True
        changes["max_total_epsilon"] = math.inf
    elif proto.privacy.total_epsilon > policy.max_total_epsilon:
        changes["max_total_epsilon"] = float(proto.privacy.total_epsilon)
    if proto.training.min_sites_per_aggregate < policy.min_sites_per_aggregate:
        changes["min_sites_per_aggregate"] = int(proto.training.min_sites_per_aggregate)
    if proto.training.aggregation not in ("secagg+",):
        changes["required_aggregation"] = proto.training.aggregation
    policy = SitePolicy.model_validate({**policy.model_dump(), **changes}, strict=False)
    problems = policy_violations(loaded, policy)
    if problems:
        raise ConfigError(
            "the pilot's site policy still refuses the protocol: " + "; ".join(problems)
        )
    return policy, [f"{k} = {v!r}" for k, v in changes.items()]


@dataclass(frozen=True)
class _Layout:
    """Where the pilot's parties live under OUT."""

    out: Path
    ids: list[str]
    pids: list[int]

    def home(self, sid: str) -> Path:
        return self.out / "sites" / sid

    @property
    def keys(self) -> Path:
        return self.out / "keys"

    @property
    def node_keys(self) -> Path:
        return self.out / "node-keys"


def _make_parties(lay: _Layout, data: Path, partitioning: str) -> tuple[Any, Any, dict[str, Any]]:
    """Every party's keys and each site's data folder; returns the server's and the board's
    keys and the fingerprints known per party."""
    from securefed.crypto import generate_keys, write_keys
    from securefed.crypto.node_key import new_node_key
    from securefed.protocol.skeleton import PartyKeys

    server = generate_keys("server", SERVER_ID)
    board = generate_keys("governance", "board")
    write_keys(server, lay.keys)
    write_keys(board, lay.out / "governance")
    known = {SERVER_ID: PartyKeys(server.public.signing_fingerprint,
                                  server.public.encryption_fingerprint)}  # fmt: skip
    for sid, pid in zip(lay.ids, lay.pids, strict=True):
        site_keys = generate_keys("site", sid)
        write_keys(site_keys, lay.home(sid) / "keys")
        shutil.copyfile(lay.home(sid) / "keys" / f"{sid}.pub.json", lay.keys / f"{sid}.pub.json")
        _, pub, fp = new_node_key(lay.home(sid) / "node")
        lay.node_keys.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pub, lay.node_keys / f"{sid}.pub")
        known[sid] = PartyKeys(site_keys.public.signing_fingerprint,
                               site_keys.public.encryption_fingerprint, fp)  # fmt: skip
        _site_data(data, partitioning, pid, lay.home(sid) / "data")
    return server, board, known


def _make_protocol(
    lay: _Layout, base_path: Path, server: Any, board: Any, known: dict[str, Any],
    reply_slot_s: float | None,
) -> tuple[LoadedProtocol, list[str]]:  # fmt: skip
    """The signed deployment protocol (with the files it pins) and each site's copy and
    SITE.toml; returns it and the policy relaxations."""
    import tomli_w

    from securefed import __version__
    from securefed.crypto import add_signature, sign_protocol_hash, signature_path
    from securefed.federation.site_executor import app_hash
    from securefed.protocol import load_protocol, pinned_files
    from securefed.protocol.skeleton import deployment_skeleton
    from securefed.trust import SiteConfig, SiteIdentity, TrustSpec, write_site_config

    base_loaded = load_protocol(base_path)
    if reply_slot_s is None:
        reply_slot_s = 120.0 if base_loaded.protocol.claims_finite_epsilon else 0.0
    text = deployment_skeleton(
        tomllib.loads(base_path.read_text(encoding="utf-8")), lay.ids, known,
        server_id=SERVER_ID, governance=board.public.signing_fingerprint, app_hash=app_hash(),
        version=__version__, reply_slot_s=reply_slot_s,
    )  # fmt: skip
    for _, pinned in pinned_files(base_loaded.protocol):  # they travel with the protocol
        for folder in (lay.out, *(lay.home(sid) for sid in lay.ids)):
            (folder / pinned.file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base_path.parent / pinned.file, folder / pinned.file)
    doc = tomllib.loads(text)
    for entry, pid in zip(doc["sites"], lay.pids, strict=True):
        entry["partition_id"] = pid
    proto_path = lay.out / "protocol.toml"
    proto_path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    loaded = load_protocol(proto_path)
    add_signature(sign_protocol_hash(loaded.sha256, board), signature_path(proto_path))
    policy, relaxed = _pilot_policy(loaded, server.public.encryption_fingerprint)
    for sid in lay.ids:
        home = lay.home(sid)
        shutil.copyfile(proto_path, home / "protocol.toml")
        shutil.copyfile(signature_path(proto_path), signature_path(home / "protocol.toml"))
        config = SiteConfig(
            site=SiteIdentity(id=sid, key=str((home / "keys" / f"{sid}.key").resolve())),
            trust=TrustSpec(governance_keys=(board.public.signing_fingerprint,)),
            policy=policy,
        )
        write_site_config(config, home / "SITE.toml")
    return loaded, relaxed


def run_pilot(
    out: Path,
    protocol: str = "demo",
    *,
    sites: int | None = None,
    preset: Any = "demo",
    seed: int = 0,
    workers: int = 2,
    supernode_env: Mapping[str, str] | None = None,
    stage_timeout_s: float = 1800.0,
    reply_slot_s: float | None = None,
    network: NetworkMode = "auto",
    on_started: Callable[[Deployment, PilotNetwork], None] | None = None,
    log: Log = print,
) -> PilotResult:
    """Run ``protocol`` (a shipped name or a file) as a deployment of ``sites`` sites (default:
    every institution of the federation) on this machine; see the module docstring.
    ``reply_slot_s``: the deployment protocol's ``training.reply_slot_s`` (default: none for a
    plain protocol, 120 s for one that claims a finite epsilon, where a deployment needs it).
    ``network``: ``auto`` (namespaces where allowed), ``netns`` or ``loopback``.
    ``on_started``: called once the SuperLink and SuperNodes run, before the coordinator starts
    (the pilot test tries its intruders there)."""
    from securefed.data.synth import synthesize
    from securefed.fileio import read_json, write_json_atomic
    from securefed.protocol import load_protocol
    from securefed.study.demo import demo_protocol

    out = Path(out)
    check_mode(network)  # an impossible --network is refused before anything is made
    base_path = demo_protocol(protocol)
    if not base_path.is_file():
        raise ConfigError(f"--protocol {protocol}: neither a shipped protocol nor a file")
    base = tomllib.loads(base_path.read_text(encoding="utf-8"))
    partitioning = str(base.get("data", {}).get("partitioning", "partitioning_1"))
    if out.exists() and any(out.iterdir()) and not (out / "pilot.json").is_file():
        raise ConfigError(f"{out}: exists and is not a pilot folder; use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "pilot.json").is_file():
        write_json_atomic(out / "pilot.json", {"preparing": True})
    state = read_json(out / "pilot.json")
    data = out / "data"
    if not (data / f"{partitioning}.csv").is_file():
        log(f"synthesizing the federation into {data} ...")
        synthesize(data, preset=preset, seed=seed, workers=workers)
    available = _partitions(data, partitioning)
    n = len(available) if sites is None else int(sites)
    if not 2 <= n <= len(available):
        raise ConfigError(f"--sites {sites}: between 2 and {len(available)} (the federation's)")
    lay = _Layout(out, [f"site-{p}" for p in available[:n]], available[:n])
    if "protocol" not in state:
        log(f"making keys, a study CA and {n} sites' folders in {out} ...")
        from securefed.crypto.study_ca import make_study_tls

        server, board, known = _make_parties(lay, data, partitioning)
        make_study_tls(out / "tls", ["127.0.0.1", "localhost"])
        loaded, relaxed = _make_protocol(lay, base_path, server, board, known, reply_slot_s)
        write_json_atomic(out / "pilot.json", {"protocol": loaded.sha256, "sites": lay.ids,
                                               "relaxed": relaxed})  # fmt: skip
    else:
        if state.get("sites") != lay.ids:
            raise ConfigError(f"{out}: a pilot of sites {state.get('sites')}; use a new --out")
        relaxed = list(state.get("relaxed", []))
        loaded = load_protocol(out / "protocol.toml")
    for line in relaxed:
        log(f"pilot site policy (each hospital's SITE.toml decides this): {line}")
    from securefed.study.federation_run import FEDERATION_STAGES

    finished = _finished(out / "study", loaded)
    if finished is not None:  # a rerun of a finished pilot: nothing to start
        clean_leftovers(out)
        log("network: none started (every stage of this pilot is done; a new --out runs another)")
        for name in FEDERATION_STAGES:
            log(f"{name}: done (resumed)")
        groups: list[int] = []
        results = finished
        described = str(finished.get("network") or "none started (the pilot was finished)")
    else:
        net = open_network(out, lay.ids, network, log)
        described = net.describe()
        log(f"network: {described}")
        try:
            results, groups = _run(lay, loaded, net, supernode_env, stage_timeout_s, log,
                                   on_started)  # fmt: skip
        finally:
            net.close()
    audit = _verify_logs(loaded, out, lay.ids)
    for party, verdict in audit.items():
        log(f"audit log of {party}: {verdict}")
    from securefed.study.federation_run import write_report

    results = {**results, "audit_logs": audit, "network": described}
    write_json_atomic(out / "study" / "results.json", results)
    write_report(loaded, out / "study", results)
    return PilotResult(out, results, described, audit, relaxed, groups)


def _finished(study: Path, loaded: LoadedProtocol) -> dict[str, Any] | None:
    """results.json of a pilot study whose every stage is done under this protocol (the
    coordinator's ``study.json``), else None."""
    from securefed.fileio import read_json
    from securefed.study.federation_run import FEDERATION_STAGES

    progress, results = study / "study.json", study / "results.json"
    if not (progress.is_file() and results.is_file()):
        return None
    doc = read_json(progress)
    if doc.get("protocol") != loaded.sha256 or not set(FEDERATION_STAGES) <= set(
        doc.get("completed", [])
    ):
        return None
    return dict(read_json(results))


def _run(
    lay: _Layout, loaded: LoadedProtocol, net: PilotNetwork,
    supernode_env: Mapping[str, str] | None, stage_timeout_s: float, log: Log,
    on_started: Callable[[Deployment, PilotNetwork], None] | None = None,
) -> tuple[dict[str, Any], list[int]]:  # fmt: skip
    """Start the SuperLink and the SuperNodes, drive the study, stop every process."""
    from securefed.federation.deployment import Deployment, LocalSite
    from securefed.study.federation_run import CoordinatorKeys, run_federation_study

    host = net.server_address
    port = _free_port(host)
    tls = lay.out / "tls"
    server_cert, server_key = _server_tls(tls, host)
    local = [
        LocalSite(
            site_id=sid, protocol=lay.home(sid) / "protocol.toml",
            site_config=lay.home(sid) / "SITE.toml", node_key=lay.home(sid) / "node" / "node.key",
            data_dir=lay.home(sid) / "data", work_dir=lay.home(sid) / "work", partition_id=pid,
            command_prefix=net.prefix(sid),
        )
        for sid, pid in zip(lay.ids, lay.pids, strict=True)
    ]  # fmt: skip
    study = lay.out / "study"
    # every SuperNode shares this machine's cores: one torch thread pool each, not one per core
    threads = max(1, (os.cpu_count() or 1) // len(lay.ids))
    env = {"SECUREFED_TORCH_THREADS": str(threads), **dict(supernode_env or {})}
    log(f"{len(lay.ids)} sites share {os.cpu_count()} cores: {threads} torch thread(s) each")
    deployment = Deployment(
        work_dir=study / "coordinator", address=host, port=port, ca_cert=tls / "ca.pem",
        server_cert=server_cert, server_key=server_key,
        supernode_env=env, local_sites=local,
    )  # fmt: skip
    keys = CoordinatorKeys.load(loaded, lay.keys / f"{SERVER_ID}.key", lay.keys, None)
    import signal
    import threading

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: all stopped

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        log(f"starting a SuperLink on {host}:{port} (TLS, node authentication) and "
            f"{len(lay.ids)} SuperNodes ...")  # fmt: skip
        deployment.start()
        if on_started is not None:
            on_started(deployment, net)
        results = run_federation_study(
            loaded, study, superlink=f"{host}:{port}", ca_cert=tls / "ca.pem",
            node_keys=lay.node_keys, keys=keys, stage_timeout_s=stage_timeout_s, log=log,
        )  # fmt: skip
    finally:
        groups = deployment.stop()
        if main:
            signal.signal(signal.SIGTERM, previous)
    return results, groups


def _verify_logs(loaded: LoadedProtocol, out: Path, ids: list[str]) -> dict[str, str]:
    """Each party's audit log verified with the key the protocol pins for it."""
    from securefed.errors import SecurefedError
    from securefed.trust.audit_log import pinned_signer, verify_audit_log

    folders = {sid: out / "sites" / sid / "work" for sid in ids}
    folders[SERVER_ID] = out / "study" / "server"
    verdicts = {}
    for party, folder in folders.items():
        try:
            summary = verify_audit_log(folder, protocol_hash=loaded.sha256,
                                       signer=pinned_signer(loaded.protocol, party))  # fmt: skip
            verdicts[party] = f"verified ({summary.entries} entries)"
        except SecurefedError as exc:
            verdicts[party] = f"FAILED: {exc}"
    return verdicts
