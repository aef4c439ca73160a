"""Round checkpoints of a federated phase: weights as ``.npz`` (``allow_pickle=False``) plus a JSON
state, written atomically (temp file + ``os.replace``) after every completed round, so that a study
resumes from its last completed round.

Layout of a phase folder::

    state.json      phase state: config digest, completed round, best round, history, status
    last.npz        weights after the last completed round
    best.npz        weights of the best round so far (by pooled validation Dice)

Only aggregated weights (the server's view) are stored; nothing site-private is written here.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefed.errors import ConfigError, DataError, TrainingError
from securefed.fileio import atomic_write_bytes, read_json, write_json_atomic

__all__ = [
    "PhaseCheckpoint",
    "PhaseState",
    "load_weights",
    "save_weights",
]

STATE_FILE = "state.json"
LAST_FILE = "last.npz"
BEST_FILE = "best.npz"
MOMENTUM_FILE = "server_momentum.npz"


def save_weights(path: Path, weights: list[np.ndarray]) -> None:
    """Write a list of arrays as ``arr_0000, arr_0001, ...`` in an ``.npz`` (no pickle)."""
    arrays = {f"arr_{i:04d}": np.ascontiguousarray(w) for i, w in enumerate(weights)}
    for name, arr in arrays.items():
        if arr.dtype == object:
            raise TrainingError(f"{path}: weight {name} has dtype object; refusing to save it")
    buffer = io.BytesIO()
    # Typed as Any: mypy matches ``**`` against savez's ``allow_pickle: bool`` keyword too; the
    # names arr_NNNN never collide with it.
    named: dict[str, Any] = arrays
    np.savez(buffer, **named)
    atomic_write_bytes(path, buffer.getvalue())


def load_weights(path: Path) -> list[np.ndarray]:
    """Read weights written by :func:`save_weights` (``allow_pickle=False``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found; check the path or rerun the phase")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = sorted(data.files)
            return [np.array(data[name]) for name in names]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable weights file (.npz without pickle)") from exc


@dataclass
class PhaseState:
    """JSON state of one phase. ``completed_round`` is the last round whose aggregate was kept
    (0 = only the initial weights were evaluated, -1 = nothing yet). A site trains in each round
    number of a phase once (securefed.federation.site_runtime), so a round that was started and
    never completed is lost, not rerun: a resumed phase goes on at the next number."""

    config_digest: str
    completed_round: int = -1
    best_round: int | None = None
    best_score: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"  # running | completed | failed
    error: str | None = None
    stopped: str | None = None  # why a completed phase ended before its last round (budgets)
    started_round: int = -1  # the last round number sent out (the sites answer each once)
    lost_rounds: list[int] = field(default_factory=list)  # started, never completed, not rerun

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: Path) -> PhaseState:
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{source}: unexpected phase state fields ({exc})") from exc


class PhaseCheckpoint:
    """The checkpoint folder of one phase (global or one cluster)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def state_path(self) -> Path:
        return self.folder / STATE_FILE

    @property
    def last_path(self) -> Path:
        return self.folder / LAST_FILE

    @property
    def best_path(self) -> Path:
        return self.folder / BEST_FILE

    def load_state(self, config_digest: str) -> PhaseState:
        """The saved state when it belongs to the same phase configuration, else a fresh one.
        A state written for another configuration is refused (never silently mixed)."""
        if not self.state_path.is_file():
            return PhaseState(config_digest=config_digest)
        try:
            doc = read_json(self.state_path)
        except DataError as exc:
            raise ConfigError(f"{exc}; delete it to restart the phase") from exc
        state = PhaseState.from_json(doc, self.state_path)
        if state.config_digest != config_digest:
            raise ConfigError(
                f"{self.state_path}: checkpoint of a different phase configuration "
                f"({state.config_digest[:12]} != {config_digest[:12]}); use another output "
                "folder or delete this one to start over"
            )
        if state.completed_round >= 0 and not self.last_path.is_file():
            raise ConfigError(
                f"{self.last_path}: missing although {STATE_FILE} says round "
                f"{state.completed_round} completed; delete the folder to restart"
            )
        return state

    @property
    def momentum_path(self) -> Path:
        return self.folder / MOMENTUM_FILE

    def load_momentum(self) -> list[np.ndarray] | None:
        """The server optimiser's velocity after the last completed round (None: not used)."""
        return load_weights(self.momentum_path) if self.momentum_path.is_file() else None

    def save_round(
        self,
        state: PhaseState,
        weights: list[np.ndarray],
        *,
        is_best: bool,
        momentum: list[np.ndarray] | None = None,
    ) -> None:
        """Persist weights (and the server momentum) then state (state last, so a crash never
        points at missing weights)."""
        save_weights(self.last_path, weights)
        if momentum is not None:
            save_weights(self.momentum_path, momentum)
        if is_best:
            save_weights(self.best_path, weights)
        write_json_atomic(self.state_path, state.to_json(), sort_keys=True)

    def save_state(self, state: PhaseState) -> None:
        write_json_atomic(self.state_path, state.to_json(), sort_keys=True)
