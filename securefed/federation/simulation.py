"""Flower's simulation engine (Ray) for one phase: every site a virtual SuperNode in this
process tree, each with its own SiteSettings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from securefed.errors import ConfigError, SecurefedError, TrainingError
from securefed.federation.client_app import make_client_app
from securefed.federation.config import PhaseConfig, SiteSettings
from securefed.federation.server_app import make_server_app
from securefed.federation.task import FlowerTask

__all__ = ["client_resources", "resolve_site_device", "run_simulation_phase"]


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
        run_simulation(
            server_app=make_server_app(cfg),
            client_app=make_client_app(task, ordered, phase=cfg.name),
            num_supernodes=len(ordered),
            backend_config=backend_config,
        )
    except KeyboardInterrupt:
        # Flower stops its engine but leaves the ServerApp thread waiting for replies (a
        # non-daemon thread: the process could not exit); STOP makes it give up at its next poll.
        STOP.set()
        raise
    except SecurefedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the server's state says what went wrong
        state = Path(cfg.out_dir) / "state.json"
        if not state.is_file():
            raise TrainingError(f"{cfg.name}: the simulation failed: {exc}") from exc
