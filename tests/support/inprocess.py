"""Flower's simulation engine without Ray, for the tests: every message goes through Flower's own
machinery (the in-memory Grid and LinkState, the virtual SuperNodes' Contexts, the Error reply of
a ClientApp that raised), and only the Ray actor pool is replaced by a worker thread in this
process that calls the ClientApp directly.

Why: starting Ray and its actors costs seconds of wall time per phase (a tiny study runs a dozen
phases), far more than the phase's own work. What differs from Ray: the ClientApp runs in the test
process (its module state and torch's global RNG are this process's), one message at a time. The
ClientApp, the message and the Context travel as a (cloud)pickled copy, as they do to a Ray actor,
so neither side aliases the other's objects and the app's in-memory state lasts one message.

tests/conftest.py installs it for the whole session (``use_inprocess_backend``); a test that must
run real Ray asks for the ``real_ray`` fixture (tests/federation/test_simulation.py keeps one).

While installed, the engine's queues also wait at most 0.05 s per ``get`` (``_PromptQueue``): its
threads poll a stop event between 1 s waits on a queue, and after a ServerApp that raised it waits
3 s for a Context that never comes, so every phase ended with 1 s of idle wall time and every
failed one with 4 (a minute over the suite). What arrives is unchanged: a Context is put before
the stop event is set, so a successful run's is already there."""

from __future__ import annotations

import contextlib
import importlib
import pickle
import queue
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["InProcessBackend", "real_ray_backend", "use_inprocess_backend"]


def _backend_base() -> type:
    from flwr.server.superlink.fleet.vce.backend import Backend

    return Backend


class InProcessBackend(_backend_base()):  # type: ignore[misc]
    """A Backend of the simulation engine that runs the ClientApp in the calling thread; what a
    ClientApp raises becomes ClientAppException (Flower's worker answers it with an Error reply,
    as for a Ray actor)."""

    def __init__(self, backend_config: dict[str, Any]) -> None:
        super().__init__(backend_config)
        self.app_fn: Callable[[], Any] | None = None

    def build(self, app_fn: Callable[[], Any]) -> None:
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return 1

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        self.app_fn = None

    def process_message(self, message: Any, context: Any) -> tuple[Any, Any]:
        import cloudpickle
        from flwr.clientapp.client_app import ClientAppException, LoadClientAppError

        if self.app_fn is None:
            raise ValueError("build() the backend before processing messages")
        # As to a Ray actor: the app, the message and the Context arrive as copies, so the app's
        # in-memory state lives for one message (what persists is on disk, as under Ray).
        app_fn, message, context = pickle.loads(cloudpickle.dumps((self.app_fn, message, context)))
        try:
            app = app_fn()
            out = app(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as Flower reports it from an actor
            raise ClientAppException(str(exc)) from exc
        return pickle.loads(pickle.dumps(out)), context


class _PromptQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue whose blocking ``get`` with a timeout waits at most 0.05 s (the engine's callers
    loop on Empty or treat it as "nothing came")."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, 0.05)
        return super().get(block, timeout)


_ENGINE_MODULES = ("flwr.server.superlink.fleet.vce.vce_api", "flwr.simulation.run_simulation")
"""The simulation engine's modules that make the queues ``_PromptQueue`` replaces."""

_REAL: list[type] = []  # Flower's RayBackend, kept while it is replaced


@contextlib.contextmanager
def use_inprocess_backend() -> Iterator[None]:
    """While inside: every ``flwr.simulation.run_simulation`` uses InProcessBackend (the engine
    imports the Ray backend's class by name each time it starts)."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    real = raybackend.RayBackend
    _REAL.append(real)
    raybackend.RayBackend = InProcessBackend  # type: ignore[misc]
    modules = [importlib.import_module(name) for name in _ENGINE_MODULES]
    queues = [m.Queue for m in modules]
    for m in modules:
        m.Queue = _PromptQueue
    try:
        yield
    finally:
        raybackend.RayBackend = real  # type: ignore[misc]
        _REAL.pop()
        for m, q in zip(modules, queues, strict=True):
            m.Queue = q


@contextlib.contextmanager
def real_ray_backend() -> Iterator[None]:
    """While inside: Flower's own Ray backend, also within ``use_inprocess_backend``."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    current = raybackend.RayBackend
    raybackend.RayBackend = _REAL[0] if _REAL else current  # type: ignore[misc]
    try:
        yield
    finally:
        raybackend.RayBackend = current  # type: ignore[misc]
