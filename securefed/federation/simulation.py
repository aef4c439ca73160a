"""Flower's simulation engine (Ray) for one phase: every site a virtual SuperNode in this
process tree, each with its own SiteSettings.

Ctrl-C during a phase: the first one stops the phase after the sites' current step (the
ServerApp gives up waiting, Flower stops its engine, the phase's checkpoint keeps its last
round) and the command exits 130 ("interrupted; rerun to resume"); a second one stops at once.
Left to Flower, a Ctrl-C stopped the engine under the waiting ServerApp thread, and Ray ended
the process with exit 1 (or it hung)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from securefed.errors import ConfigError, SecurefedError, TrainingError
from securefed.federation.client_app import make_client_app
from securefed.federation.config import PhaseConfig, SiteSettings
from securefed.federation.server_app import make_server_app
from securefed.federation.task import FlowerTask

__all__ = ["client_resources", "resolve_site_device", "run_simulation_phase"]

STOPPING = "interrupted: stopping after the sites' current step (Ctrl-C again to stop at once)"


@contextmanager
def _graceful_ctrl_c() -> Iterator[None]:
    """While a phase runs: the first SIGINT sets grid_wrapper.STOP (the ServerApp stops waiting,
    which stops Flower's engine), a second raises KeyboardInterrupt at once. Only where Python's
    own handler is installed (the main thread of a process that takes Ctrl-C; a background job
    that ignores SIGINT keeps ignoring it)."""
    from securefed.federation.grid_wrapper import STOP

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):  # fmt: skip
        yield
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if STOP.is_set():
            raise KeyboardInterrupt
        STOP.set()
        sys.stderr.write(STOPPING + "\n")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def resolve_site_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` as given; ``auto``: cuda when torch sees a GPU. A cuda
    device without a GPU is refused here, before any phase starts."""
    import torch

    name = str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: torch sees no GPU on this machine (CPU build of torch, or "
                "no driver); use --device cpu"
            )
        return name
    raise ConfigError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")


def client_resources(sites: Sequence[SiteSettings]) -> dict[str, Any]:
    """Ray's resources per simulated site: one CPU, and an equal share of one GPU when the
    sites train on cuda (so that every site of the phase fits on the GPU at once)."""
    gpu = any(str(s.device).startswith("cuda") for s in sites)
    share = (10_000 // max(1, len(sites))) / 10_000 if gpu else 0.0  # rounded down: all fit
    return {"num_cpus": 1, "num_gpus": share}


def run_simulation_phase(
    cfg: PhaseConfig, sites: Sequence[SiteSettings], task: FlowerTask | None
) -> None:
    """Run one phase in the simulation engine; the result is in the phase's checkpoint folder."""
    from flwr.simulation import run_simulation  # deprecated in Flower 1.42: see flower_internals

    from securefed.federation.flower_internals import BackendConfig
    from securefed.federation.grid_wrapper import STOP

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # Ray starts its workers at nice 15: the simulated sites (the study's work) then lose the
    # CPU to any other job, and a round times out on a busy machine (seen: the one real-Ray
    # test under a loaded test run, a FeTS-scale study beside a test suite). Normal priority,
    # unless the user set RAY_worker_niceness.
    os.environ.setdefault("RAY_worker_niceness", "0")
    by_pid = {s.partition_id: s for s in sites}
    ids = list(cfg.site_ids)
    if cfg.aggregation == "bfv" and cfg.decryptor not in ids:
        ids.append(cfg.decryptor)  # a node that only decrypts (it holds no case of the phase)
    missing = [p for p in ids if p not in by_pid]
    if missing:
        raise ConfigError(f"{cfg.name}: no site settings for partition(s) {missing}")
    ordered = [by_pid[p] for p in ids]
    backend_config: BackendConfig = {
        "client_resources": client_resources(ordered),
        "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False},
    }
    STOP.clear()
    try:
        with _graceful_ctrl_c():
            run_simulation(
                server_app=make_server_app(cfg),
                client_app=make_client_app(task, ordered, phase=cfg.name),
                num_supernodes=len(ordered),
                backend_config=backend_config,
            )
        if STOP.is_set():  # a Ctrl-C as the phase finished: stop before the next one
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        # a second Ctrl-C (or one Flower's engine took): STOP ends the ServerApp thread's wait
        STOP.set()
        raise
    except Exception as exc:  # noqa: BLE001 - the server's state says what went wrong
        if STOP.is_set():  # the ServerApp gave up waiting on Ctrl-C
            raise KeyboardInterrupt from exc
        if isinstance(exc, SecurefedError):
            raise
        state = Path(cfg.out_dir) / "state.json"
        if not state.is_file():
            raise TrainingError(f"{cfg.name}: the simulation failed: {exc}") from exc
