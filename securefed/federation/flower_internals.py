"""Flower behind one adapter: every name securefed uses from outside Flower's public API.

**Public API** (what any securefed.federation module may import from Flower directly): the names
listed in ``__all__`` of the packages in :data:`PUBLIC_MODULES` (``flwr.app``, ``flwr.clientapp``,
``flwr.clientapp.mod``, ``flwr.serverapp``, ``flwr.client``, ``flwr.client.mod``,
``flwr.common``, ``flwr.server``, ``flwr.server.strategy``, ``flwr.server.workflow``,
``flwr.simulation``), imported from those packages themselves. ``flwr.compat`` exports nothing
(no ``__all__``), so nothing of it is public. Anything else is internal: any other package
(``flwr.proto``, ``flwr.supercore``, ``flwr.supernode``, ``flwr.superlink``, ``flwr.cli``,
``flwr.compat``, ...) and any submodule of a public package (``flwr.app.message_type``,
``flwr.common.secure_aggregation``, ``flwr.server.compat``, ...), even where the same name is
also public. Only this module imports internals (import-linter contract "only
securefed.federation.flower_internals imports Flower's internals" in pyproject.toml); the other
modules import them from here. ``tests/federation/test_flower_internals.py`` checks, against the
installed Flower, that every name here imports, that the parameters securefed passes to each
callable exist in its signature, and that the patched SuperNode poll is still what it patches:
a Flower upgrade that moves or renames one fails there, naming it, not at a hospital.

What securefed uses, and why:

Messages in Flower's legacy (NumPyClient) format, which the SecAgg+ workflow needs (docs
PLATFORM.md: SecAgg+ exists only on the legacy path):

- ``recorddict_compat`` (``flwr.compat.common.recorddict_compat``): conversions between the legacy
  instructions/results (FitIns, FitRes, EvaluateIns, GetPropertiesIns, ...) and a RecordDict;
  securefed's coordinator builds and reads legacy messages itself (discovery, training rounds,
  study stages, the hostile-coordinator self-test).
- ``RECORD_KEY_CONFIGS``, ``SecAggPlusKey``, ``SecAggPlusStage``
  (``flwr.common.secure_aggregation.secaggplus_constants``: ``RECORD_KEY_CONFIGS``, ``Key``,
  ``Stage``): the config record and keys of Flower's SecAgg+ messages; the site's rules check
  every SecAgg+ stage, the coordinator relays the sites' key signatures beside them.
- ``MAIN_CONFIGS_RECORD``, ``MAIN_PARAMS_RECORD``, ``WorkflowKey``
  (``flwr.server.workflow.constant``: the same, ``Key``): where Flower's workflows keep the current
  model and the round in the LegacyContext; the server's round loop drives SecAggPlusWorkflow
  through them.
- ``ClientProxy`` (``flwr.server.client_proxy``) and ``GridClientProxy``
  (``flwr.server.compat.grid_client_proxy``): the per-node handles a legacy Strategy
  (FedAvgM) configures and aggregates.
- ``ClientAppCallable``, ``Mod`` (``flwr.clientapp.typing``): the type of a ClientApp call and of a
  ClientApp mod (securefed's site mods: egress guard, site rules, pacing, ledger heads).
- ``generate_key_pairs``, ``public_key_to_bytes`` (``flwr.supercore.primitives.asymmetric``):
  SecAgg+'s own key pairs, for the self-test's forged keys.

The site's executor (securefed.federation.site_executor, Flower's ``--isolation process``
protocol: it takes ClientApp tasks from the SuperNode's Runtime API):

- ``AcquireTaskRequest`` (``flwr.proto.runtime_pb2``), ``TaskType`` (``flwr.supercore.constant``),
  ``RuntimeHttpClient`` (``flwr.supercore.runtime``), ``make_simple_http_retry_invoker``
  (``flwr.supercore.retry``), ``RuntimeTokenHttpInterceptor``, ``RuntimeVersionHttpInterceptor``,
  ``SuperExecAuthHttpInterceptor`` (``flwr.supercore.interceptors``): ask the Runtime API for a
  task, as Flower's own SuperExec does, authenticated with the SuperExec secret. The executor's
  task client subclasses ``RuntimeHttpClient`` and overrides its ``PullObject`` (it asks again,
  every 0.05 s, for an object the SuperNode has not received yet, before Flower's own retry
  waits 1 s, then 2 s: securefed.federation.site_executor._TaskClient).
- ``pull_task_input``, ``push_message``, ``push_task_output``
  (``flwr.supernode.runtime.run_clientapp``), ``HeartbeatSender``,
  ``make_task_heartbeat_fn_http`` (``flwr.supercore.heartbeat``): run one task as Flower's
  ``flwr-clientapp`` does, in the site's long-lived process.
- ``ErrorCode``, ``SubStatus`` (``flwr.common.constant``): the reply and task codes (INVALID_FAB for
  an unapproved app bundle).
- ``build_fab_from_disk`` (``flwr.cli.build``), ``install_from_fab`` (``flwr.cli.install``),
  ``get_load_client_app_fn`` (``flwr.clientapp.utils``): the app bundle's hash (what a protocol
  approves), installing an approved bundle, loading its ClientApp.

The simulation engine:

- ``BackendConfig`` (``flwr.server.superlink.fleet.vce.backend.backend``): the type of
  ``run_simulation``'s ``backend_config``.
- ``run_simulation`` itself is public (``flwr.simulation``) and imported from there. Flower 1.42
  marks it deprecated: "The `run_simulation` function is deprecated and will be removed in a
  future version of Flower. Please use `flwr run` in the CLI instead to run your simulation."
  ``flwr run`` takes an app folder and module references, not app objects; it is the only
  non-deprecated public way, and it cannot pass securefed's in-process ClientApp (built around
  each site's SiteSettings and an in-memory FlowerTask) and ServerApp (a PhaseConfig). The
  other ways (``flwr.simulation.run_simulation_process``, ``_run_simulation``) are the
  SuperExec's process entry point and a private function. So securefed keeps
  ``run_simulation`` (its deprecation is logged once per phase) until Flower offers a public
  object-based entry; the version-compat test fails when it disappears.

Round cost (docs/deployment.md section 6; benchmarks/results/deployment.md):

- ``InMemoryGrid`` (``flwr.superlink.grid``): the simulation's grid (wrapped so that a
  Ctrl-C of the coordinator's process stops its ServerApp thread, see grid_wrapper.STOP).
- ``HttpGrid`` (``flwr.superlink.grid``): the ServerApp's grid in a deployment, whose
  ``send_and_receive`` sleeps 3 s between pulls; securefed.federation.grid_wrapper.fast_polling
  recognises it and replaces only ``send_and_receive`` with one on the public ``push_messages``
  and ``pull_messages`` that polls every 0.2 s (the in-memory grids of the simulation and of the
  tests are left alone).
- ``flower_supernode`` (``flwr.supernode.cli``): Flower's ``flower-supernode`` entry point, started
  by securefed's launcher (``python -m securefed.federation.flower_supernode``) after
  :func:`shorten_supernode_idle_poll`.
- :func:`shorten_supernode_idle_poll` **patches an internal**: the SuperNode's main loop
  (``flwr.supernode.start_client_internal.start_client_internal``) sleeps a fixed 3 s
  (``time.sleep(3)``) after every pull that brought no message. The patch replaces the ``time``
  module that function sees with a stand-in whose ``sleep(3)`` lasts ``idle_s`` (every other
  sleep and clock call is the real one), in the launcher's process only. What it changes: the
  SuperNode asks the SuperLink for messages every ``idle_s`` instead of every 3 s while idle
  (more requests to the SuperLink; nothing else is sent, received or checked differently). The
  version-compat test fails if that function no longer contains the ``time.sleep(3)`` it
  patches; at run time the launcher then starts Flower unpatched and says so.
"""

from __future__ import annotations

import importlib
import inspect
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from flwr.cli.build import build_fab_from_disk
from flwr.cli.install import install_from_fab
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggPlusKey
from flwr.common.secure_aggregation.secaggplus_constants import Stage as SecAggPlusStage
from flwr.compat.common import recorddict_compat
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.supercore.constant import TaskType
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.superlink.grid import HttpGrid, InMemoryGrid

if TYPE_CHECKING:  # imported on first use (module __getattr__ below): see _LAZY
    from flwr.server.superlink.fleet.vce.backend.backend import BackendConfig
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supernode.cli import flower_supernode
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

__all__ = [
    "MAIN_CONFIGS_RECORD",
    "MAIN_PARAMS_RECORD",
    "PUBLIC_MODULES",
    "RECORD_KEY_CONFIGS",
    "SUPERNODE_IDLE_SLEEP_S",
    "SUPERNODE_LOOP",
    "AcquireTaskRequest",
    "BackendConfig",
    "ClientAppCallable",
    "ClientProxy",
    "ErrorCode",
    "GridClientProxy",
    "HeartbeatSender",
    "HttpGrid",
    "InMemoryGrid",
    "Mod",
    "RuntimeHttpClient",
    "RuntimeTokenHttpInterceptor",
    "RuntimeVersionHttpInterceptor",
    "SecAggPlusKey",
    "SecAggPlusStage",
    "SubStatus",
    "SuperExecAuthHttpInterceptor",
    "TaskType",
    "WorkflowKey",
    "build_fab_from_disk",
    "flower_supernode",
    "generate_key_pairs",
    "get_load_client_app_fn",
    "install_from_fab",
    "make_simple_http_retry_invoker",
    "make_task_heartbeat_fn_http",
    "public_key_to_bytes",
    "pull_task_input",
    "push_message",
    "push_task_output",
    "recorddict_compat",
    "shorten_supernode_idle_poll",
]

_LAZY = {
    "BackendConfig": "flwr.server.superlink.fleet.vce.backend.backend",
    "HeartbeatSender": "flwr.supercore.heartbeat",
    "make_task_heartbeat_fn_http": "flwr.supercore.heartbeat",
    "RuntimeTokenHttpInterceptor": "flwr.supercore.interceptors",
    "RuntimeVersionHttpInterceptor": "flwr.supercore.interceptors",
    "SuperExecAuthHttpInterceptor": "flwr.supercore.interceptors",
    "flower_supernode": "flwr.supernode.cli",
    "pull_task_input": "flwr.supernode.runtime.run_clientapp",
    "push_message": "flwr.supernode.runtime.run_clientapp",
    "push_task_output": "flwr.supernode.runtime.run_clientapp",
}
"""Names imported on first use, not with this module: together they cost about 0.8 s of import
time (the simulation engine's link state, the heartbeat and HTTP interceptors, the SuperNode's
CLI) that most processes importing this module (a ClientApp, a ServerApp) never need."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


PUBLIC_MODULES = frozenset({
    "flwr.app", "flwr.clientapp", "flwr.clientapp.mod", "flwr.serverapp", "flwr.client",
    "flwr.client.mod", "flwr.common", "flwr.server", "flwr.server.strategy",
    "flwr.server.workflow", "flwr.simulation",
})  # fmt: skip
"""Flower's public API: the names in these packages' ``__all__``, imported from them."""

SUPERNODE_LOOP = "flwr.supernode.start_client_internal"
"""The module of the SuperNode's main loop (``start_client_internal``), whose idle sleep
:func:`shorten_supernode_idle_poll` shortens."""
SUPERNODE_IDLE_SLEEP_S = 3
"""The fixed idle sleep of that loop in Flower 1.42 (``time.sleep(3)``)."""


class _IdlePollClock:
    """Stands in for the ``time`` module inside :data:`SUPERNODE_LOOP`: a sleep of exactly
    :data:`SUPERNODE_IDLE_SLEEP_S` lasts ``idle_s``; everything else is the ``time`` module's."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle_s if seconds == SUPERNODE_IDLE_SLEEP_S else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def supernode_idle_sleep_present(module: ModuleType | None = None) -> bool:
    """Whether the SuperNode's main loop still has the patched sleep: ``start_client_internal``
    calls ``time.sleep(3)`` through the module global ``time``."""
    loop = module or importlib.import_module(SUPERNODE_LOOP)
    fn = getattr(loop, "start_client_internal", None)
    clock = getattr(loop, "time", None)
    if fn is None or not isinstance(clock, ModuleType | _IdlePollClock):
        return False
    source = inspect.getsource(fn)
    return source.count(f"time.sleep({SUPERNODE_IDLE_SLEEP_S})") == 1


def shorten_supernode_idle_poll(idle_s: float) -> bool:
    """Make the SuperNode of this process poll the SuperLink every ``idle_s`` seconds while idle
    instead of Flower's fixed 3 s (see the module docstring). Returns False, changing nothing,
    when the installed Flower's loop is not the one this patches."""
    if not 0 < idle_s <= SUPERNODE_IDLE_SLEEP_S:
        raise ValueError(f"idle_s={idle_s}: expected 0 < idle_s <= {SUPERNODE_IDLE_SLEEP_S}")
    loop = importlib.import_module(SUPERNODE_LOOP)
    if not supernode_idle_sleep_present(loop):
        return False
    loop.time = _IdlePollClock(idle_s)  # type: ignore[attr-defined]
    return True
