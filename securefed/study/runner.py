"""The whole CFFL study on one machine (simulation protocols): every role composed in order.

Stages, each resumable (``RUNDIR/state.json`` records completed stages and the protocol hash):

1. ``features``: each site extracts its radiomics (site-local), protects and seals its release to
   the server; the server collects (plain / local-dp). In secure-aggregate mode nothing per-case is
   released here.
2. ``clustering``: the server fits the paper's pipeline and seals the model to every site; each
   site assigns its own cases locally (secure-aggregate: the federated DP clustering).
3. ``training``: global FedAvg then per-cluster finetuning on Flower's simulation engine, under the
   protocol's aggregation (SecAgg+ by default), plus the protocol's baselines.
4. ``evaluation``: test cases scored at their site by the model of their cluster; unseen
   institutions apart.
5. ``report``: ``results.json`` and ``report.html``.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from securefed import __version__
from securefed.crypto import signature_path
from securefed.errors import ConfigError, ProtocolError
from securefed.fileio import read_json, write_json_atomic
from securefed.protocol import LoadedProtocol, load_protocol, pinned_files
from securefed.study.clustering_stage import run_clustering
from securefed.study.context import Log, Progress, StudyContext
from securefed.study.evaluation_stage import run_evaluation
from securefed.study.features_stage import run_features
from securefed.study.governance import accept_protocol, sign_stage_heads, site_config_paths
from securefed.study.paths import StudyPaths
from securefed.study.report_stage import run_report
from securefed.study.training_stage import run_training

__all__ = ["STAGES", "run_study"]

STAGES = ("features", "clustering", "training", "evaluation", "report")
RUNNERS: dict[str, Callable[[StudyContext], object]] = {
    "features": run_features,
    "clustering": run_clustering,
    "training": run_training,
    "evaluation": run_evaluation,
    "report": run_report,
}


# -- state -------------------------------------------------------------------------------------
def _prepare_rundir(protocol_path: Path, rundir: Path) -> tuple[LoadedProtocol, dict[str, Any]]:
    original = load_protocol(protocol_path)
    if not original.protocol.is_simulation:
        raise ProtocolError(
            f"{protocol_path}: `securefed run` drives a whole study on one machine and needs "
            "study.mode = 'simulation'; a real deployment runs each role at its own site "
            "(docs/deployment.md)"
        )
    paths = StudyPaths(rundir)
    if paths.state.exists():
        state = read_json(paths.state)
        if state.get("protocol") != original.sha256:
            raise ProtocolError(
                f"{rundir} holds a run of protocol {state.get('protocol')}, not {original.sha256}; "
                "use a new --out (a run never mixes protocols)"
            )
    else:
        if rundir.exists() and any(rundir.iterdir()):
            raise ConfigError(
                f"{rundir}: exists and is not a securefed run folder; use a new --out"
            )
        rundir.mkdir(parents=True, exist_ok=True)
        # The run's own copy of the protocol, its signatures and the files it pins (so RUNDIR
        # is self-contained).
        shutil.copyfile(protocol_path, paths.protocol)
        if signature_path(protocol_path).is_file():
            shutil.copyfile(signature_path(protocol_path), signature_path(paths.protocol))
        for _, pinned in pinned_files(original.protocol):
            target = rundir / pinned.file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(original.resolve(pinned.file), target)
        state = {
            "protocol": original.sha256,
            "created_at": _now(),
            "securefed_version": __version__,
            "completed": {},
        }
        write_json_atomic(paths.state, state)
    loaded = load_protocol(paths.protocol)
    if loaded.sha256 != original.sha256:  # pragma: no cover - the copy is byte-identical
        raise ProtocolError(f"{paths.protocol}: differs from {protocol_path}")
    return loaded, state


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _mark_done(
    paths: StudyPaths, state: dict[str, Any], stage: str, seconds: float, **extra: Any
) -> None:
    state["completed"][stage] = {"seconds": round(seconds, 2), "at": _now(), **extra}
    write_json_atomic(paths.state, state)


# -- the study -----------------------------------------------------------------------------------
def run_study(
    protocol_path: Path,
    data_root: Path,
    rundir: Path,
    *,
    truth: Path | None = None,
    stop_after: str | None = None,
    workers: int = 1,
    log: Log = print,
    progress: Progress | None = None,
    site_configs: Path | None = None,
    radiomics_cache: Path | None = None,
    global_model_cache: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run (or resume) the study; returns the results mapping (also in RUNDIR/results.json).
    ``progress(task, done, total)`` is called as long steps advance (for a progress bar).
    Before each stage every site accepts the protocol with its own trust and policy
    (securefed.study.governance; ``site_configs``: a folder of ``<site id>.toml``).
    ``radiomics_cache``: a feature cache shared between runs (keyed by file content and
    settings; a sweep's points share it), default ``RUNDIR/cache/radiomics``.
    ``global_model_cache``: global FedAvg phases shared between runs whose global phase is the
    same (securefed.study.global_cache; never with DP training); default: not shared.
    ``device``: the simulated sites' torch device (``cuda``: Ray gives each site an equal share
    of the GPU, securefed.federation.simulation.client_resources; ``auto``: cuda when torch sees
    one)."""
    if stop_after is not None and stop_after not in STAGES:
        raise ConfigError(f"--stop-after {stop_after!r}: use one of {', '.join(STAGES)}")
    loaded, state = _prepare_rundir(Path(protocol_path), Path(rundir))
    paths = StudyPaths(Path(rundir))
    ctx = StudyContext.build(
        loaded, Path(data_root), paths, truth=truth, workers=workers, log=log, progress=progress
    )
    ctx.radiomics_cache = radiomics_cache
    ctx.global_model_cache = global_model_cache
    from securefed.federation.simulation import resolve_site_device

    ctx.device = resolve_site_device(device)
    configs = site_config_paths(ctx, site_configs)
    ctx.site_configs = configs
    for stage in STAGES:
        if stage in state["completed"] and stage != "report":
            log(f"{stage}: done earlier ({state['completed'][stage]['seconds']} s): skipped")
        else:
            log(f"{stage} ...")
            if stage != "report":  # every site-side stage starts with the site's own check
                accepted = accept_protocol(ctx, configs)
                ctx.accepted = accepted
                signers = min(len(a.signers) for a in accepted.values())
                log(f"  {len(accepted)} site(s) accepted {loaded.sha256[:19]}... "
                    f"(>= {signers} trusted signature(s) each)")  # fmt: skip
            start = time.perf_counter()
            RUNNERS[stage](ctx)
            if stage != "report":
                sign_stage_heads(ctx)  # every party closes the stage in its audit log
            _mark_done(paths, state, stage, time.perf_counter() - start)
            log(f"{stage}: done in {time.perf_counter() - start:.1f} s")
        if stage == stop_after:
            break
    return read_json(paths.results) if paths.results.exists() else {"state": state}
