"""The site's own executor for its SuperNode (``flower-supernode --isolation process``).

Flower's default executor starts a fresh ``flwr-clientapp`` process for every message, installs
the app bundle (FAB) the coordinator sent and puts it first on ``sys.path``: whoever builds the
FAB chooses the code a hospital runs. This executor takes each ClientApp task from the
SuperNode's local Runtime API and

- refuses any task whose FAB content hash is not in the site's approved set (the hashes the
  governance-signed protocol lists in ``governance.approved_apps``, accepted by the site's own
  trust and policy), *before* the bundle is installed or any of it is imported: the server gets
  an ``INVALID_FAB`` error reply and the site's audit log an ``app-refused`` entry;
- runs approved tasks in this one long-lived process, so torch and the site's prepared data are
  loaded once, not once per message.

What leaves the site is unchanged: the ClientApp's reply (through securefed's egress guard) or
the refusal naming the FAB hash (public: the coordinator chose it). Tests:
``tests/federation/test_supernode.py``, ``tests/federation/test_deployment.py``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Error, Message

from securefed.errors import ConfigError
from securefed.federation.flower_internals import (
    AcquireTaskRequest,
    ErrorCode,
    HeartbeatSender,
    RuntimeHttpClient,
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SubStatus,
    SuperExecAuthHttpInterceptor,
    TaskType,
    build_fab_from_disk,
    get_load_client_app_fn,
    install_from_fab,
    make_simple_http_retry_invoker,
    make_task_heartbeat_fn_http,
    pull_task_input,
    push_message,
    push_task_output,
)

__all__ = ["SiteExecutor", "TaskOutcome", "app_hash", "fab_hash"]

_LOG = logging.getLogger("securefed.site_executor")
_ACQUIRE = "/flwr.proto.Runtime/AcquireTask"


def fab_hash(content: bytes) -> str:
    """``sha256:<hex>`` of a FAB's bytes (Flower's FAB hash, prefixed)."""
    return "sha256:" + hashlib.sha256(content).hexdigest()


def app_hash(folder: Path | None = None) -> str:
    """The FAB hash of the securefed app folder (what ``flwr run`` of it sends; Flower builds
    FABs with fixed timestamps, so the hash depends on the folder's files alone)."""
    from securefed.federation.app import app_dir

    return fab_hash(build_fab_from_disk(folder or app_dir()))


OBJECT_POLL_S = 0.05
"""How often a task's client asks again for an object of the task's message that the SuperNode
has not received from the SuperLink yet."""
OBJECT_WAIT_S = 2.0
"""How long it asks that way before it answers "not available" (Flower's retry then waits 1 s,
2 s, 4 s, ...)."""


class _TaskClient(RuntimeHttpClient):
    """The Runtime API client of one task. The SuperNode hands out a task as soon as it has the
    message's header, before it has pulled the message's objects from the SuperLink; Flower's
    ``pull_task_input`` then retries each missing object after 1 s, then 2 s (most of a deployment
    round's latency, measured: benchmarks/results/deployment.md). This client asks again every
    :data:`OBJECT_POLL_S` for up to :data:`OBJECT_WAIT_S` first; what it returns is the
    SuperNode's own answer."""

    def PullObject(self, request: Any) -> Any:  # noqa: N802 - Flower's method name
        deadline = time.monotonic() + OBJECT_WAIT_S
        while True:
            res = super().PullObject(request)
            if res.object_available or not res.object_found or time.monotonic() >= deadline:
                return res
            time.sleep(OBJECT_POLL_S)


@dataclass(frozen=True)
class TaskOutcome:
    """What the executor did with one task."""

    run_id: int
    fab: str
    status: str  # "completed", "failed" or "refused"
    details: str = ""


@dataclass
class SiteExecutor:
    """Take ClientApp tasks from a SuperNode's Runtime API (``runtime_address``, loopback) and
    run the approved ones in this process.

    ``approved``: ``sha256:<hex>`` FAB hashes; empty refuses everything. ``secret``: the SuperExec
    shared secret given to the SuperNode (``--superexec-auth-secret-file``), so that no other
    local process can take the site's tasks. ``on_refused(fab_hash, run_id)`` records a refusal
    (the site's audit log)."""

    runtime_address: str
    approved: Collection[str]
    secret: bytes | None = None
    on_refused: Callable[[str, int], None] | None = None
    poll_s: float = 0.2
    outcomes: list[TaskOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        for h in self.approved:
            if not (h.startswith("sha256:") and len(h) == 71):
                raise ConfigError(f"approved app hash {h!r}: expected sha256:<64 hex>")
        self.approved = frozenset(self.approved)

    def _client(self, token: str | None = None) -> RuntimeHttpClient:
        interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if token is not None:
            interceptors = [
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ]
        elif self.secret:
            interceptors.append(
                SuperExecAuthHttpInterceptor(
                    master_secret=self.secret, protected_methods={_ACQUIRE}
                )
            )
        client_type = RuntimeHttpClient if token is None else _TaskClient
        return client_type.from_server_address(
            server_address=self.runtime_address,
            insecure=True,  # the SuperNode's Runtime API on loopback, guarded by the secret
            root_certificates=None,
            interceptors=interceptors,  # type: ignore[arg-type]
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def serve(self, stop: threading.Event | None = None, max_tasks: int | None = None) -> None:
        """Poll for tasks until ``stop`` is set (or ``max_tasks`` were handled)."""
        acquirer = self._client()
        try:
            while not (stop is not None and stop.is_set()):
                res = acquirer.AcquireTask(
                    AcquireTaskRequest(
                        supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[]
                    )
                )
                if res.HasField("task") and res.token:
                    self.run_task(res.token, "sha256:" + res.task.fab_hash)
                    if max_tasks is not None and len(self.outcomes) >= max_tasks:
                        return
                else:
                    time.sleep(self.poll_s)
        finally:
            acquirer.close()

    def run_task(self, token: str, claimed_hash: str) -> TaskOutcome:
        """Run (or refuse) one task; never raises for a task's own failure."""
        client = self._client(token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        context = None
        outcome: TaskOutcome
        try:
            message, context, run, fab = pull_task_input(client)
            actual = fab_hash(fab.content)
            if actual not in self.approved or claimed_hash != actual:
                reason = (
                    f"securefed site: app bundle {actual} is not approved by the site's accepted "
                    "protocol (governance.approved_apps); refused before installing it"
                )
                _LOG.error("run %s: %s", run.run_id, reason)
                if self.on_refused is not None:
                    self.on_refused(actual, run.run_id)
                push_message(
                    client, Message(Error(ErrorCode.INVALID_FAB, reason), reply_to=message), context
                )
                outcome = TaskOutcome(run.run_id, actual, "refused", reason)
                push_task_output(client, context, SubStatus.FAILED, reason)
                return outcome
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            try:
                client_app = load(run.fab_id, run.fab_version, fab.hash_str)
                reply = client_app(message=message, context=context)
                status, details = SubStatus.COMPLETED, ""
            except Exception as exc:  # the task's own failure: reply with the error, go on
                _LOG.exception("run %s: the ClientApp raised", run.run_id)
                details = f"{type(exc).__name__}: {exc}"
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, details),
                                reply_to=message)  # fmt: skip
                status = SubStatus.FAILED
            push_message(client, reply, context)
            push_task_output(client, context, status, details)
            outcome = TaskOutcome(run.run_id, actual, str(status), details)
            return outcome
        except Exception as exc:  # the Runtime API itself failed: report, keep serving
            _LOG.exception("task could not be run")
            push_task_output(client, context, SubStatus.FAILED, f"{type(exc).__name__}: {exc}")
            outcome = TaskOutcome(-1, claimed_hash, "failed", f"{type(exc).__name__}: {exc}")
            return outcome
        finally:
            self.outcomes.append(outcome)
            heartbeat.stop()
            client.close()
