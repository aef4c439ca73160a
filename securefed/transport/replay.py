"""Persistent message counters: the sender's counter store and the recipient's replay guard.

Both keep small JSON files written atomically (temp file, fsync, rename) under a state folder
and serialise concurrent processes with an advisory lock, so that counters survive restarts:

- :class:`SendCounter` (sender side) reserves the next counter *before* a message is sealed,
  so a counter is never reused, even if the sender crashes right after sealing.
- :class:`ReplayGuard` (recipient side) remembers, per sender and stage, the highest counter
  accepted; a message whose counter is not above it (a replay, or an older message delivered
  late) is refused. The guard only advances once a message has been fully verified.

Nothing here leaves the party: state files stay in the local state folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from securefed.errors import CounterStateError, ReplayError
from securefed.fileio import atomic_write_bytes as write_atomic

__all__ = ["CounterStateError", "ReplayGuard", "SendCounter"]

_MAX_STATE = 1024 * 1024
_MAX_COUNTER = 2**63 - 1


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_state(path: Path) -> dict[str, int]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    if len(raw) > _MAX_STATE:
        raise CounterStateError(f"{path}: counter state is too large; it is not ours")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CounterStateError(
            f"{path}: counter state is corrupt; restore it from a backup (do not delete it: "
            "that would re-open the door to replays)"
        ) from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and type(v) is int and 0 <= v <= _MAX_COUNTER for k, v in data.items()
    ):
        raise CounterStateError(f"{path}: counter state has an unexpected structure")
    return data


def _write_state(path: Path, data: dict[str, int]) -> None:
    write_atomic(path, json.dumps(data, sort_keys=True, indent=1).encode() + b"\n", 0o600)


def _key(*parts: str) -> str:
    return "\x1f".join(parts)


class SendCounter:
    """Sender-side monotonic counter per (recipient, stage), persisted in ``state_dir``."""

    FILE = "send-counters.json"

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / self.FILE

    def reserve(self, recipient: str, stage: str) -> int:
        """The next counter (>= 1), durably recorded before it is returned."""
        with _locked(self.state_dir):
            data = _read_state(self.path)
            key = _key(recipient, stage)
            value = data.get(key, 0) + 1
            if value > _MAX_COUNTER:
                raise CounterStateError(f"{self.path}: counter for {recipient}/{stage} exhausted")
            data[key] = value
            _write_state(self.path, data)
            return value

    def last(self, recipient: str, stage: str) -> int:
        with _locked(self.state_dir):
            return _read_state(self.path).get(_key(recipient, stage), 0)


class ReplayGuard:
    """Recipient-side replay protection per (sender, stage), persisted in ``state_dir``.

    One state file per sender (named by a hash of the id) keeps writes small."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)

    def _path(self, sender: str) -> Path:
        return self.state_dir / f"replay-{hashlib.sha256(sender.encode()).hexdigest()[:32]}.json"

    def last(self, sender: str, stage: str) -> int:
        """Highest counter accepted from ``sender`` for ``stage`` (0 if none)."""
        with _locked(self.state_dir):
            return _read_state(self._path(sender)).get(_key(sender, stage), 0)

    def check(self, sender: str, stage: str, counter: int) -> None:
        """Raise ReplayError unless ``counter`` is above the last accepted one."""
        last = self.last(sender, stage)
        if counter <= last:
            raise ReplayError(_replay_message(sender, stage, counter, last))

    def advance(self, sender: str, stage: str, counter: int) -> None:
        """Record ``counter`` as accepted (atomically re-checked under the lock)."""
        with _locked(self.state_dir):
            path = self._path(sender)
            data = _read_state(path)
            key = _key(sender, stage)
            last = data.get(key, 0)
            if counter <= last:
                raise ReplayError(_replay_message(sender, stage, counter, last))
            data[key] = counter
            _write_state(path, data)


def _replay_message(sender: str, stage: str, counter: int, last: int) -> str:
    return (
        f"message from {sender!r} for stage {stage!r} has counter {counter}, but counter {last} "
        "was already accepted: a replayed or out-of-date message; ask the sender to send anew"
    )
