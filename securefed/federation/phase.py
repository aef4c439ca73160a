"""One federated phase (global FedAvg or one cluster's finetuning), from the protocol to its
result, in Flower's simulation engine or deployment engine.

``run_phase`` returns the best weights, the best round and the per-round history, read back from
the phase's checkpoint folder (the same for both engines). A phase that fails (e.g. too few sites
in a SecAgg+ round) raises with the server's message; rerunning it resumes from the last
completed round.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from securefed.errors import ConfigError, TooFewParticipantsError, TrainingError
from securefed.federation.config import PhaseConfig, SiteSettings
from securefed.federation.deployment import Deployment
from securefed.federation.simulation import run_simulation_phase
from securefed.federation.task import FlowerTask
from securefed.fileio import read_json
from securefed.protocol import LoadedProtocol
from securefed.protocol.egress import training_egress
from securefed.training.checkpoints import PhaseCheckpoint, PhaseState, load_weights

__all__ = [
    "Engine",
    "PhaseResult",
    "phase_config",
    "read_phase_result",
    "run_phase",
    "watch_rounds",
]

Engine = Literal["simulation", "deployment"]


@dataclass
class PhaseResult:
    """Outcome of one phase: best weights/round (by pooled validation Dice) and the history."""

    name: str
    out_dir: Path
    best_round: int | None
    best_score: float | None
    history: list[dict[str, Any]]
    best_weights: list[np.ndarray]
    stopped: str | None = None  # why the phase ended before its last round (privacy budgets)
    lost_rounds: tuple[int, ...] = ()  # started, never completed, not rerun (a resumed phase)

    @property
    def best_weights_path(self) -> Path:
        return PhaseCheckpoint(self.out_dir).best_path


# -- configuration from the protocol ------------------------------------------------------
def phase_config(
    loaded: LoadedProtocol,
    *,
    out_dir: Path,
    sites: Mapping[int, int | None],
    assignments: Path,
    cluster: int | None = None,
    initial_weights: Path | None = None,
    he_context: Path | None = None,
    decryptor: int = -1,
) -> PhaseConfig:
    """The PhaseConfig of the global phase (``cluster=None``) or of one cluster's finetuning,
    from a LoadedProtocol. ``sites`` maps partition id -> train case count (FedAvg weights), or
    None where the server does not learn it; SecAgg+'s max_weight is tightened to the largest
    weight (better quantisation precision, never above the protocol's bound): 1 when the sites
    send uniform weights (a protocol that claims a finite epsilon, securefed.protocol.egress).
    Under bfv: ``he_context`` (the server's aggregator context) and ``decryptor`` (the study's
    decrypting site); the packing is two values per slot when the phase's weight sum fits."""
    p = loaded.protocol
    egress = training_egress(p)
    t, sa = p.training, p.secure_aggregation
    if t.aggregation not in ("fedavg", "secagg+", "bfv"):
        raise ConfigError(
            f"training.aggregation {t.aggregation!r}: the Flower engine serves fedavg, secagg+ "
            "and bfv"
        )
    counts = [n for n in sites.values() if n is not None]
    largest = 1 if egress.weights == "uniform" else max(counts, default=1)
    max_weight = float(min(sa.max_weight, max(1, largest)))
    fields = 2
    if t.aggregation == "bfv":
        from securefed.crypto.bfv import encoding_for

        fields = encoding_for(sa.clipping_range, int(max_weight) * len(sites),
                              p.homomorphic.precision_bits).fields  # fmt: skip
    return PhaseConfig(
        out_dir=str(out_dir),
        sites=",".join(str(s) for s in sorted(sites)),
        protocol_hash=loaded.sha256,
        rounds=t.global_rounds if cluster is None else t.finetune_rounds,
        lr=t.lr if cluster is None else t.finetune_lr,
        phase="global" if cluster is None else "cluster",
        cluster=-1 if cluster is None else int(cluster),
        local_epochs=t.local_epochs,
        local_steps=t.local_steps or 0,
        aggregation=t.aggregation,
        min_sites=t.min_sites_per_aggregate,
        num_shares=sa.num_shares,
        reconstruction_threshold=sa.reconstruction_threshold,
        clipping_range=sa.clipping_range,
        quantization_range=sa.quantization_range,
        max_weight=max_weight,
        timeout_s=sa.timeout_s,
        initial_weights=str(initial_weights) if initial_weights else "",
        assignments=str(assignments),
        eval_round_zero=cluster is not None and egress.validation,
        validate=egress.validation,
        validate_every=t.validation_every,
        # FedAvgM drives the long global phase; finetuning (CFFL) adapts gently with FedAvg.
        server_lr=t.server_lr if cluster is None else 1.0,
        server_momentum=t.server_momentum if cluster is None else 0.0,
        seed=t.seed,
        he_context=str(he_context) if he_context else "",
        decryptor=int(decryptor),
        he_fields=fields,
        client_dp=_client_dp_inputs(p),
        dp_training=t.dp_training or "",
        sent_arrays=_sent_arrays(t),
        weighted=cluster is not None and egress.cluster_weights == "masked-counts",
    )


def _sent_arrays(spec: Any) -> str:
    """The run config's ``sent-arrays``: which model arrays the sites send back (the trained
    blocks of training.trainable), so that the server restores the rest from its start model."""
    from securefed.federation.task import default_task, sent_indices

    sent = sent_indices(default_task(), spec)
    return ",".join(str(i) for i in sent) if sent is not None else ""


def _client_dp_inputs(protocol: Any) -> str:
    """The run config's ``client-dp``: the plan inputs the server decodes the sum with."""
    if not protocol.training.client_dp.enabled:
        return ""
    import json

    from securefed.training.client_dp import plan_inputs

    return json.dumps(plan_inputs(protocol), sort_keys=True)


# -- results -------------------------------------------------------------------------------------
def read_phase_result(cfg: PhaseConfig) -> PhaseResult:
    """The result of a completed phase from its checkpoint folder (TrainingError otherwise)."""
    ckpt = PhaseCheckpoint(Path(cfg.out_dir))
    if not ckpt.state_path.is_file():
        raise TrainingError(f"{cfg.name}: the server wrote no state in {cfg.out_dir}")
    state = PhaseState.from_json(read_json(ckpt.state_path), ckpt.state_path)
    if state.status != "completed":
        message = f"{cfg.name}: phase {state.status}: {state.error or 'no error recorded'}"
        if "SF171" in (state.error or "") or "too few" in (state.error or "").lower():
            raise TooFewParticipantsError(message)
        raise TrainingError(message)
    best = ckpt.best_path if ckpt.best_path.is_file() else ckpt.last_path
    return PhaseResult(
        name=cfg.name,
        out_dir=Path(cfg.out_dir),
        best_round=state.best_round,
        best_score=state.best_score,
        history=state.history,
        best_weights=load_weights(best),
        stopped=state.stopped,
        lost_rounds=tuple(state.lost_rounds),
    )


@contextmanager
def watch_rounds(
    cfg: PhaseConfig, progress: Callable[[str, int, int], None] | None, every_s: float = 1.0
) -> Iterator[None]:
    """While the body runs, report the phase's completed rounds (its server's ``state.json``)
    as ``progress(name, done, total)``, from a background thread; nothing without ``progress``."""
    if progress is None:
        yield
        return
    path = PhaseCheckpoint(Path(cfg.out_dir)).state_path
    stop = threading.Event()

    def report() -> None:
        try:
            done = int(read_json(path).get("completed_round", 0)) if path.is_file() else 0
        except (OSError, ValueError, TypeError, ConfigError):  # being rewritten: next time
            return
        progress(cfg.name, min(done, cfg.rounds), cfg.rounds)

    def poll() -> None:
        while not stop.wait(every_s):
            report()

    report()
    thread = threading.Thread(target=poll, name="securefed-round-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report()


def run_phase(
    cfg: PhaseConfig,
    sites: Sequence[SiteSettings],
    *,
    engine: Engine = "simulation",
    task: FlowerTask | None = None,
    deployment: Deployment | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PhaseResult:
    """Run (or resume) one phase; returns best weights, best round and per-round history.

    ``task``: the site task for the simulation engine (default: securefed's DynUNet). In the
    deployment engine each SuperNode uses its own (``$SECUREFED_FLOWER_TASK`` or the default).
    ``progress(name, rounds done, rounds)``: called as rounds complete (a progress bar).
    """
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    with watch_rounds(cfg, progress):
        if engine == "simulation":
            run_simulation_phase(cfg, sites, task)
        elif engine == "deployment":
            if deployment is None:
                raise ConfigError("the deployment engine needs a Deployment (SuperLink address...)")
            deployment.submit(cfg)
        else:
            raise ConfigError(f"engine {engine!r}: expected simulation or deployment")
    return read_phase_result(cfg)
