"""The whole CFFL study on a running Flower deployment (``securefed federation run``): the
coordinator drives every stage over the SuperLink; each hospital's SuperNode answers under its
own accepted protocol (securefed.federation.site_stages, client_app).

Stages, each resumable (``OUT/study.json`` lists those completed and the protocol hash):

1. ``features``: every training site releases its sealed feature envelope as a Flower reply
   (the same envelope the file path writes); the server collects them (``server/features``).
2. ``clustering``: the server fits the paper's pipeline on what it collected and seals the model
   to every site; each site opens it and assigns its own cases (kept at the site). The server
   assigns the released rows with the same model (the phase plan: which sites hold train cases
   of which cluster); under plain and local-dp it is the sites' assignment of their released
   rows.
3. ``training``: the global FedAvg phase and one phase per cluster (securefed.study.cffl).
4. ``evaluation``: each site scores its own test cases with the global model and with its
   cluster's model; what it releases is what its protocol declares for evaluation (per-site
   counts and mean Dice per region under a plain protocol; under a finite epsilon nothing, or,
   with ``evaluation.dp_summary``, one DP summary over the training sites: their masked, noised
   sums of Dice open only as the total, securefed.privacy.test_summary).
5. ``report``: ``results.json`` and ``report.html`` (securefed.report.deployment).

Under ``release.mode = "secure-aggregate"`` no feature is released: the clustering runs as the
protocol's masked rounds over the deployment (securefed.federation.site_secure).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed import __version__
from securefed.clustering.assignments import Assignment, read_assignments, write_assignments
from securefed.crypto import PrivateKeys, PublicKeys
from securefed.errors import ConfigError, ProtocolError, SecurefedError, TrainingError
from securefed.federation.config import PhaseConfig
from securefed.federation.deployment import Deployment
from securefed.federation.site_rules import ReplyCode
from securefed.fileio import read_json, write_json_atomic
from securefed.protocol import LoadedProtocol
from securefed.study.cffl import StudyPhases, run_cffl_phases
from securefed.study.coordinate import open_deployment, remote_sites

__all__ = [
    "FEATURE_ATTEMPTS",
    "FEDERATION_STAGES",
    "CoordinatorKeys",
    "run_federation_study",
    "write_report",
]

FEDERATION_STAGES = ("features", "clustering", "training", "evaluation", "report")
FEATURE_ATTEMPTS = 5  # features stage requests while sites answer slot-overrun (paced releases)
Log = Callable[[str], None]


@dataclass(frozen=True)
class CoordinatorKeys:
    """The server's private keys and the sites' public bundles (each matching its pin)."""

    server: PrivateKeys
    sites: dict[str, PublicKeys]

    @classmethod
    def load(
        cls, loaded: LoadedProtocol, server_key: Path, keys_dir: Path, passphrase: bytes | None
    ) -> CoordinatorKeys:
        from securefed.crypto import load_private_keys, load_public_keys
        from securefed.site.release import check_server_key

        server = load_private_keys(server_key, passphrase, role="server")
        check_server_key(loaded, server.public)
        sites: dict[str, PublicKeys] = {}
        for spec in loaded.protocol.sites:
            path = Path(keys_dir) / f"{spec.id}.pub.json"
            pub = load_public_keys(path, role="site")
            pins = (spec.signing_key, spec.encryption_key)
            if (
                pins != (pub.signing_fingerprint, pub.encryption_fingerprint)
                or pub.party_id != spec.id
            ):
                raise ConfigError(
                    f"{path}: not the keys the protocol pins for {spec.id} (sites.{spec.id}."
                    "signing_key / encryption_key)"
                )
            sites[spec.id] = pub
        return cls(server, sites)


class _Progress:
    """``OUT/study.json``: the protocol and the completed stages."""

    def __init__(self, out: Path, sha256: str) -> None:
        self.path = out / "study.json"
        if self.path.is_file():
            doc = read_json(self.path)
            if doc.get("protocol") != sha256:
                raise ProtocolError(
                    f"{out} holds a study of protocol {doc.get('protocol')}, not {sha256}; use a "
                    "new --out (a study never mixes protocols)"
                )
            self.doc = doc
        else:
            self.doc = {"protocol": sha256, "completed": [], "engine": "deployment"}

    def done(self, stage: str) -> bool:
        return stage in self.doc["completed"]

    def mark(self, stage: str, seconds: float) -> None:
        self.doc["completed"].append(stage)
        self.doc.setdefault("seconds", {})[stage] = round(seconds, 1)
        write_json_atomic(self.path, self.doc)


def _stage_config(
    loaded: LoadedProtocol, out_dir: Path, stage: str, sites: Sequence[int], timeout_s: float
) -> PhaseConfig:
    return PhaseConfig(
        out_dir=str(out_dir), sites=",".join(str(p) for p in sorted(sites)),
        protocol_hash=loaded.sha256, rounds=0, lr=0.0, stage=stage,
        min_sites=1, timeout_s=timeout_s, node_wait_s=timeout_s,
    )  # fmt: skip


def _submit_stage(deployment: Deployment, cfg: PhaseConfig) -> None:
    """One stage through ``flwr run``; raises with the stage's error when it failed."""
    state = Path(cfg.out_dir) / "state.json"
    state.unlink(missing_ok=True)  # a rerun waits for this run's outcome, never the last one
    deployment.submit(cfg)
    doc = read_json(state)
    if doc.get("status") != "completed":
        raise TrainingError(f"stage {cfg.stage}: {doc.get('error') or doc.get('status')}")


def run_federation_study(
    loaded: LoadedProtocol,
    out: Path,
    *,
    superlink: str,
    ca_cert: Path | None,
    node_keys: Path | None,
    keys: CoordinatorKeys,
    insecure: bool = False,
    he_context: Path | None = None,
    stage_timeout_s: float = 1800.0,
    run_timeout_s: float = 3600.0,
    log: Log = print,
) -> dict[str, Any]:
    """Run (or resume) every stage of the study on the SuperLink at ``superlink``; returns
    results.json's content."""
    proto = loaded.protocol
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(out, loaded.sha256)
    deployment = open_deployment(
        loaded, out, superlink=superlink, ca_cert=ca_cert, insecure=insecure,
        node_keys=node_keys, run_timeout_s=run_timeout_s, he_context=he_context,
    )  # fmt: skip
    held = set(proto.data.held_out_partitions)
    every = sorted(s.partition_id for s in proto.sites)
    training = [p for p in every if p not in held]
    secure = proto.release.mode == "secure-aggregate"
    steps: list[tuple[str, Callable[[], None]]] = [
        (
            "features",
            lambda: (
                None
                if secure
                else _features(loaded, out, deployment, keys, training, stage_timeout_s)
            ),
        ),
        (
            "clustering",
            lambda: (
                _secure_clustering(loaded, out, deployment, keys, training, every, stage_timeout_s)
                if secure
                else _clustering(loaded, out, deployment, keys, every, stage_timeout_s)
            ),
        ),
        ("training", lambda: _training(loaded, out, deployment)),
        ("evaluation", lambda: _evaluation(loaded, out, deployment, every, stage_timeout_s, keys)),
        ("report", lambda: _report(loaded, out, progress.doc)),
    ]
    for name, run in steps:
        if progress.done(name):
            log(f"{name}: done (resumed)")
            continue
        log(f"{name} ...")
        t0 = time.monotonic()
        run()
        progress.mark(name, time.monotonic() - t0)
        log(f"{name}: done in {time.monotonic() - t0:.0f} s")
    return dict(read_json(out / "results.json"))


def _stage_dir(out: Path, stage: str) -> Path:
    return out / "stages" / stage


def _write_server_keys(folder: Path, keys: CoordinatorKeys) -> None:
    from securefed.fileio import canonical_json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server-keys.json").write_bytes(canonical_json(keys.server.public.to_json()))


def _features(
    loaded: LoadedProtocol,
    out: Path,
    deployment: Deployment,
    keys: CoordinatorKeys,
    sites: list[int],
    timeout_s: float,
) -> None:
    from securefed.federation.stage_server import INBOX
    from securefed.server.collect import collect_features

    if (out / "server" / "collected.json").is_file():
        return  # collected before the coordinator stopped: the envelopes are not opened twice
    folder = _stage_dir(out, "features")
    _write_server_keys(folder, keys)
    for attempt in range(1, FEATURE_ATTEMPTS + 1):
        try:
            _submit_stage(deployment, _stage_config(loaded, folder, "features", sites, timeout_s))
            break
        except TrainingError as exc:
            # a site whose release did not fit its reply slot (training.reply_slot_s) finishes it
            # in the background and resends the same envelope from its outbox when asked again
            if ReplyCode.SLOT_OVERRUN.reason not in str(exc) or attempt == FEATURE_ATTEMPTS:
                raise
    collected = collect_features(
        folder / INBOX, loaded, keys.server, out / "server" / "features", out / "server",
        site_public_keys=tuple(keys.sites.values()),
    )  # fmt: skip
    write_json_atomic(out / "server" / "collected.json", {
        "cases": len(collected.subject_ids), "columns": len(collected.columns),
        "senders": sorted(collected.senders),
    })  # fmt: skip


def _clustering(
    loaded: LoadedProtocol,
    out: Path,
    deployment: Deployment,
    keys: CoordinatorKeys,
    sites: list[int],
    timeout_s: float,
) -> None:
    import numpy as np

    from securefed.clustering.io import read_feature_table
    from securefed.federation.stage_server import model_path
    from securefed.fileio import atomic_write_bytes
    from securefed.server.cluster_model import fit_cluster_model, seal_for_sites
    from securefed.transport import SendCounter

    table = read_feature_table(out / "server" / "features")
    fitted = fit_cluster_model(table, loaded)
    fitted.model.save(out / "clustering" / "model")
    labels = fitted.model.assign(np.asarray(table.values))
    rows = [
        Assignment(sid, int(pid), split, int(c))
        for sid, pid, split, c in zip(
            table.subject_ids, table.partition_ids, table.splits, labels, strict=True
        )
    ]
    write_assignments(out / "clusters.csv", rows)
    summary = {"mode": loaded.protocol.release.mode, **fitted.summary()}
    summary["cluster_sizes"] = {str(c): int((labels == c).sum()) for c in sorted(set(labels))}
    write_json_atomic(out / "clustering" / "clustering.json", summary)
    folder = _stage_dir(out, "assign")
    _write_server_keys(folder, keys)
    site_of = {s.partition_id: s.id for s in loaded.protocol.sites}
    sealed = seal_for_sites(
        fitted.model, server_keys=keys.server, sites={site_of[p]: keys.sites[site_of[p]]
                                                      for p in sites},
        loaded=loaded, counters=SendCounter(out / "server" / "counters"),
    )  # fmt: skip
    for pid in sites:
        atomic_write_bytes(model_path(folder, pid), sealed[site_of[pid]])
    _submit_stage(deployment, _stage_config(loaded, folder, "assign", sites, timeout_s))


def _masking_keys(
    loaded: LoadedProtocol, deployment: Deployment, folder: Path, sites: list[int], timeout_s: float
) -> dict[str, tuple[bytes, list[bytes]]]:
    """The ``secure-keys`` stage: each site's masking key and its signed entry, by site id, each
    verified against the key the protocol pins for that site."""
    import base64

    from securefed.crypto.secagg_keys import SignedKeys, verify_masking_keys
    from securefed.federation.site_secure import decode_signed
    from securefed.trust.site_key import pinned_site_keys

    site_of = {s.partition_id: s.id for s in loaded.protocol.sites}
    _submit_stage(deployment, _stage_config(loaded, folder, "secure-keys", sites, timeout_s))
    entries = {
        site_of[int(pid)]: (base64.b64decode(e["masking-key"]),
                            decode_signed(str(e["signed"]).encode()))
        for pid, e in read_json(folder / "keys.json").items()
    }  # fmt: skip
    verify_masking_keys({sid: (key, SignedKeys.from_list(signed))
                         for sid, (key, signed) in entries.items()},
                        pinned_site_keys(loaded.protocol), loaded.sha256)  # fmt: skip
    return entries


def _secure_clustering(
    loaded: LoadedProtocol,
    out: Path,
    deployment: Deployment,
    keys: CoordinatorKeys,
    training: list[int],
    every: list[int],
    timeout_s: float,
) -> None:
    """The secure-aggregate clustering over the deployment: the training sites publish their
    signed masking keys, then each round of the protocol's plan is one stage whose masked
    replies only open as their noised sum (securefed.clustering.secure's server role here);
    every site assigns its own cases to the final public centroids. The coordinator's phase
    plan (``OUT/clusters.csv``) is then every training site in every cluster (one placeholder
    row per site and cluster, no case): under this protocol no party learns which site holds
    which cluster (membership ``all-sites``)."""

    import numpy as np

    from securefed.clustering.secure import (
        MaskedAggregate,
        SecureClusteringServer,
        plan_secure_clustering,
    )
    from securefed.federation.site_secure import encode_directory
    from securefed.privacy.bounds import load_pinned_bounds
    from securefed.privacy.geometry import release_geometry
    from securefed.trust.audit_log import AuditLog

    proto = loaded.protocol
    site_of = {s.partition_id: s.id for s in proto.sites}
    pid_of = {v: k for k, v in site_of.items()}
    entries = _masking_keys(loaded, deployment, _stage_dir(out, "secure-keys"), training, timeout_s)
    directory = encode_directory(entries)
    dimension = release_geometry(loaded, load_pinned_bounds(loaded)).dimension
    plan = plan_secure_clustering(proto, dimension)
    server = SecureClusteringServer(plan, tuple(sorted(entries)))
    audit = AuditLog(out / "server", keys.server.party_id, loaded.sha256)
    for r in range(len(plan.rounds)):
        folder = _stage_dir(out, f"secure-round-{r}")
        if (folder / "opened.json").is_file():  # a resumed coordinator: the round is done
            server.centroids_ = np.array(read_json(folder / "opened.json")["centroids"])
            continue
        request = server.request(r)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "request.json", {
            "round": r, "kind": request.kind, "directory": directory.decode(),
            "centroids": None if request.centroids is None else request.centroids.tolist(),
        })  # fmt: skip
        pids = [pid_of[sid] for sid in request.participants]
        _submit_stage(deployment, _stage_config(loaded, folder, "secure-round", pids, timeout_s))
        answers = [
            MaskedAggregate(site_of[pid], r, np.frombuffer(
                (folder / "masked" / f"partition-{pid}.bin").read_bytes(), dtype="<u8").copy())
            for pid in pids
        ]  # fmt: skip
        server.receive(r, answers)
        audit.record("aggregate-opened", stage="secure-clustering", round=r, sites=len(pids))
        # the sites answer each round once: a resumed coordinator goes on after this one
        write_json_atomic(folder / "opened.json", {"centroids": np.array(server.centroids_)
                                                   .tolist()})  # fmt: skip
    audit.sign_head(keys.server)
    centroids = np.array(server.centroids_)
    write_json_atomic(out / "clustering" / "model" / "centroids.json",
                      {"centroids": centroids.tolist()})  # fmt: skip
    folder = _stage_dir(out, "secure-assign")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "centroids.json", centroids.tolist())
    _submit_stage(deployment, _stage_config(loaded, folder, "secure-assign", every, timeout_s))
    plan_rows = [Assignment(f"plan-{site_of[p]}-cluster-{c}", p, "train", c)
                 for p in training for c in range(plan.k)]  # fmt: skip
    write_assignments(out / "clusters.csv", plan_rows)
    summary = {"mode": "secure-aggregate", "k": plan.k, "k_selection": "secure",
               "fit_cases": None, "cluster_sizes": {},
               "secure": {"algorithm": plan.algorithm, "dimension": plan.dimension,
                          "rounds": list(plan.rounds), "epsilon": plan.epsilon,
                          "delta": plan.delta, "noise_multiplier": plan.noise_multiplier,
                          "messages_received_by_server": len(server.received_)}}  # fmt: skip
    write_json_atomic(out / "clustering" / "clustering.json", summary)


def _training(loaded: LoadedProtocol, out: Path, deployment: Deployment) -> None:
    phases: StudyPhases = run_cffl_phases(
        loaded, remote_sites(loaded), out / "clusters.csv", out, engine="deployment",
        deployment=deployment,
    )  # fmt: skip
    g = phases.global_result
    doc = {
        "global": {"weights": str(g.best_weights_path.relative_to(out)),
                   "best_round": g.best_round, "best_score": g.best_score},
        "clusters": {
            str(c): {"weights": str(o.weights_path.relative_to(out)), "status": o.status,
                     "reason": o.reason, "sites": sorted(o.sites),
                     "best_round": o.result.best_round if o.result else None,
                     "best_score": o.result.best_score if o.result else None}
            for c, o in phases.clusters.items()
        },
    }  # fmt: skip
    write_json_atomic(out / "phases.json", doc)


def _evaluation(
    loaded: LoadedProtocol,
    out: Path,
    deployment: Deployment,
    sites: list[int],
    timeout_s: float,
    keys: CoordinatorKeys,
) -> None:
    phases = read_json(out / "phases.json")
    clusters = sorted({r.cluster for r in read_assignments(out / "clusters.csv")})
    folder = _stage_dir(out, "test")
    folder.mkdir(parents=True, exist_ok=True)
    up = Path("..") / ".."
    models = [{"method": "fedavg", "cluster": -1, "weights": str(up / phases["global"]["weights"])}]
    for c in clusters:
        weights = phases["clusters"].get(str(c), {}).get("weights", phases["global"]["weights"])
        models.append({"method": "cffl", "cluster": c, "weights": str(up / weights)})
    write_json_atomic(folder / "test-models.json", models)
    _submit_stage(deployment, _stage_config(loaded, folder, "test", sites, timeout_s))
    from securefed.privacy.test_summary import plan_test_summary

    if plan_test_summary(loaded.protocol) is not None:
        held = set(loaded.protocol.data.held_out_partitions)
        training = [p for p in sites if p not in held]
        _dp_summary(loaded, out, deployment, training, timeout_s, keys.server)


def _dp_summary(
    loaded: LoadedProtocol,
    out: Path,
    deployment: Deployment,
    sites: list[int],
    timeout_s: float,
    server_key: PrivateKeys,
) -> None:
    """The DP test summary (``evaluation.dp_summary``, securefed.privacy.test_summary): the
    training sites' signed masking keys, then one ``dp-test`` stage whose masked replies open
    only as their noised total. The sites answer it once: a failure is written to
    ``stages/dp-test/summary.json`` and the report says so; it is never asked again."""

    import numpy as np

    from securefed.crypto.masking import unmask_sum
    from securefed.federation.site_secure import encode_directory
    from securefed.privacy.test_summary import plan_test_summary, summary_from_total
    from securefed.trust.audit_log import AuditLog

    proto = loaded.protocol
    plan = plan_test_summary(proto)
    assert plan is not None
    folder = _stage_dir(out, "dp-test")
    if (folder / "summary.json").is_file():
        return  # asked once: a resumed coordinator keeps what it opened (or why it could not)
    folder.mkdir(parents=True, exist_ok=True)
    site_of = {s.partition_id: s.id for s in proto.sites}
    if len(sites) < plan.min_sites:
        write_json_atomic(folder / "summary.json", {
            "error": f"{len(sites)} training site(s), under evaluation.dp_summary.min_sites "
                     f"({plan.min_sites}): no summary"})  # fmt: skip
        return
    entries = _masking_keys(loaded, deployment, _stage_dir(out, "dp-test-keys"), sites, timeout_s)
    write_json_atomic(folder / "request.json", {"directory": encode_directory(entries).decode()})
    try:
        _submit_stage(deployment, _stage_config(loaded, folder, "dp-test", sites, timeout_s))
        masked = {site_of[p]: np.frombuffer((folder / "masked" / f"partition-{p}.bin")
                                            .read_bytes(), dtype="<u8").copy()
                  for p in sites}  # fmt: skip
        total = unmask_sum(masked, sorted(entries))
    except (TrainingError, OSError, SecurefedError) as exc:
        write_json_atomic(folder / "summary.json", {"error": f"no summary: {exc}"})
        return
    doc = summary_from_total(total, plan, len(sites))
    write_json_atomic(folder / "summary.json", doc)
    audit = AuditLog(out / "server", server_key.party_id, loaded.sha256)
    audit.record("aggregate-opened", stage="dp-test-summary", sites=len(sites))
    audit.sign_head(server_key)


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Site means pooled by their case counts (what a plain protocol lets the sites send)."""
    from securefed.federation.metrics import pooled_dice

    scored = [r for r in rows if r["num_test"] > 0 and "dice_mean" in r]
    pooled = pooled_dice({**r, "num_val": r["num_test"]} for r in scored)  # the validation rule
    n = int(pooled.pop("num_val"))
    out: dict[str, Any] = {"num_test": n, "sites": len({r["partition_id"] for r in scored})}
    out.update({k: (v if n else None) for k, v in pooled.items()})
    return out


def _report(loaded: LoadedProtocol, out: Path, progress: dict[str, Any]) -> None:
    from securefed.federation.stage_server import SCORES

    proto = loaded.protocol
    rows = read_json(_stage_dir(out, "test") / SCORES)
    held = set(proto.data.held_out_partitions)
    site_of = {s.partition_id: s.id for s in proto.sites}
    summary_file = _stage_dir(out, "dp-test") / "summary.json"
    summary = read_json(summary_file) if summary_file.is_file() else None
    methods: dict[str, Any] = {}
    for method in ("fedavg", "cffl"):
        mine = [r for r in rows if r["method"] == method]
        methods[method] = {
            "test": _pooled([r for r in mine if r["partition_id"] not in held]),
            "unseen": _pooled([r for r in mine if r["partition_id"] in held]),
            "per_site": [{**r, "site": site_of.get(int(r["partition_id"]), "?")} for r in mine],
        }
        if summary is not None and method in summary:
            methods[method]["test"] = summary[method]  # the DP summary (noised, DP-accounted)
    results = {
        "engine": "deployment",
        "protocol": loaded.sha256,
        "securefed": __version__,
        "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "stages": dict(progress.get("seconds", {})),
        "clustering": read_json(out / "clustering" / "clustering.json"),
        "phases": read_json(out / "phases.json"),
        "methods": methods,
        "evaluation_release": _evaluation_release(rows, summary),
    }
    if "local" in proto.training.baselines or "centralized" in proto.training.baselines:
        results["not_run"] = sorted(
            set(proto.training.baselines) - {"fedavg", "cffl"}
        )  # simulation-only baselines
    write_json_atomic(out / "results.json", results)
    write_report(loaded, out, results)


def _evaluation_release(rows: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    """One line on what the evaluation released."""
    if any(r["num_test"] > 0 for r in rows):
        return "per-site test counts and mean Dice per region (plain protocol)"
    if summary is None:
        return "none: the sites' protocol declares no evaluation metric (finite epsilon)"
    if "error" in summary:
        return f"DP test summary (evaluation.dp_summary) not available: {summary['error']}"
    dp = summary["fedavg"]["dp"]
    return (
        f"a DP test summary over {summary['fedavg']['sites']} training sites (epsilon "
        f"{dp['epsilon']:g}, delta {dp['delta']:g} per patient; noise sd {dp['sigma_sum']:.2f} "
        "on each sum of Dice and on the test-case count); no per-site value"
    )


def write_report(loaded: LoadedProtocol, out: Path, results: dict[str, Any]) -> Path:
    """OUT/report.html from results.json's content (securefed.report.deployment)."""
    from securefed.protocol.egress import egress_table
    from securefed.report.deployment import write_deployment_report

    proto = loaded.protocol
    return write_deployment_report(
        out / "report.html", results, [r.to_json() for r in egress_table(proto)],
        proto.study.name, proto.release.mode, proto.training.aggregation,
    )  # fmt: skip
