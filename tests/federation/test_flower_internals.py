"""Version compatibility of Flower's internals (securefed.federation.flower_internals): the
installed Flower is the pinned one; every name of the adapter imports; every call securefed makes
to a Flower name passes parameters that Flower's signature has; the SuperNode loop still has the
sleep the launcher patches; securefed's other modules import only Flower's public API. A Flower
upgrade that renames or moves one of them fails here, naming it. Also the ServerApp's fast-polling
grid (securefed.federation.grid_wrapper.FastPollGrid) and the SuperNode launcher."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import inspect
import re
import subprocess
import sys
import time
import tomllib
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from securefed.federation import flower_internals as fi
from securefed.federation.grid_wrapper import INMEMORY_POLL_S, FastPollGrid, fast_polling

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "securefed"
ADAPTER = "securefed.federation.flower_internals"


def test_installed_flower_is_the_pinned_one() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(r"flwr(\[[^]]*\])?==", d)]
    assert importlib.metadata.version("flwr") == pin.split("==")[1]


@pytest.mark.parametrize("name", fi.__all__)
def test_every_name_of_the_adapter_imports(name: str) -> None:
    assert getattr(fi, name) is not None, name


def test_the_adapter_imports_what_it_says() -> None:
    """Names imported on first use come from the module the adapter names."""
    for name, module in fi._LAZY.items():
        assert name in fi.__all__
        assert getattr(importlib.import_module(module), name) is getattr(fi, name), name


# -- the calls securefed makes ---------------------------------------------------------------
def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        yield name, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _flower_names(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """{local name: (module, name)} of what a module imports from Flower or the adapter."""
    out = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
            continue
        if node.module.split(".")[0] == "flwr" or node.module == ADAPTER:
            for alias in node.names:
                out[alias.asname or alias.name] = (node.module, alias.name)
    return out


def _resolve(module: str, name: str) -> Any:
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return getattr(mod, name)
    return importlib.import_module(f"{module}.{name}")


def _check_call(target: Any, call: ast.Call) -> str | None:
    """Why ``call`` would not bind to ``target``'s signature (None: it binds)."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords
    ):
        return None  # *args / **kwargs at the call site: nothing to check statically
    kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
    descriptor = getattr(target, "DESCRIPTOR", None)
    if descriptor is not None and hasattr(descriptor, "fields_by_name"):  # a protobuf message
        missing = sorted(set(kwargs) - set(descriptor.fields_by_name))
        return f"no field(s) {missing}" if missing or call.args else None
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None  # a builtin without a signature
    try:
        sig.bind(*[None] * len(call.args), **kwargs)
    except TypeError as exc:
        return f"{exc} (signature {sig})"
    return None


def _calls() -> Iterator[tuple[str, int, str, Any, ast.AST]]:
    """(module, line, what, Flower object, node) for every call to, and attribute read of, a
    Flower name (imported from Flower or from the adapter) in securefed outside the adapter."""
    for module, tree in _modules():
        if module == ADAPTER:
            continue
        names = _flower_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in names:
                    yield module, node.lineno, func.id, _resolve(*names[func.id]), node
                elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                      and func.value.id in names):  # fmt: skip
                    owner = _resolve(*names[func.value.id])
                    what = f"{func.value.id}.{func.attr}"
                    yield module, node.lineno, what, getattr(owner, func.attr, None), node
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in names):  # fmt: skip
                owner = _resolve(*names[node.value.id])
                what = f"{node.value.id}.{node.attr}"
                yield module, node.lineno, what, getattr(owner, node.attr, None), node


def test_every_flower_call_of_securefed_binds_to_flowers_signature() -> None:
    """Each call to a Flower callable (a re-export of the adapter or a public name) passes
    positional and keyword parameters that its signature has, and every attribute read from a
    Flower name (``Key.STAGE``, ``compat.fitins_to_recorddict``) exists."""
    problems, checked = [], 0
    for module, line, what, target, node in _calls():
        if target is None:
            problems.append(f"{module}:{line}: {what} does not exist in the installed Flower")
            continue
        if isinstance(node, ast.Call):
            checked += 1
            why = _check_call(target, node)
            if why:
                problems.append(f"{module}:{line}: {what}(...): {why}")
    assert not problems, "\n".join(problems)
    assert checked > 50  # the scan sees securefed's calls


def test_what_securefed_reads_from_flowers_returns() -> None:
    """The values the site executor takes apart (not visible as calls)."""
    from flwr.proto.runtime_pb2 import AcquireTaskResponse  # pylint: disable=E0611

    load = fi.get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    inspect.signature(load).bind("fab-id", "fab-version", "fab-hash")  # as site_executor calls it
    hints = typing.get_type_hints(fi.pull_task_input)
    _, _, run, fab = typing.get_args(hints["return"])
    assert {"run_id", "fab_id", "fab_version"} <= {f.name for f in dataclasses.fields(run)}
    assert {"content", "hash_str"} <= {f.name for f in dataclasses.fields(fab)}
    fields = AcquireTaskResponse.DESCRIPTOR.fields_by_name
    assert {"task", "token"} <= set(fields)
    assert "fab_hash" in fields["task"].message_type.fields_by_name
    for method in ("AcquireTask", "PullObject", "close"):
        assert callable(getattr(fi.RuntimeHttpClient, method, None)), method
    # the site executor's task client answers PullObject (site_executor._TaskClient)
    from flwr.proto.message_pb2 import PullObjectResponse  # pylint: disable=E0611

    assert {"object_found", "object_available"} <= set(PullObjectResponse.DESCRIPTOR.fields_by_name)
    assert "client.PullObject" in inspect.getsource(fi.pull_task_input)
    assert fi.TaskType.CLIENT_APP and fi.ErrorCode.INVALID_FAB and fi.SubStatus.FAILED
    for name in ("push_messages", "pull_messages", "send_and_receive"):
        assert name in vars(fi.HttpGrid), name


def test_run_simulation_is_still_there() -> None:
    """Flower 1.42 deprecates ``run_simulation`` (securefed keeps it: the adapter's docstring);
    this fails when it goes, or when its parameters change."""
    from flwr.simulation import run_simulation

    sig = inspect.signature(run_simulation)
    sig.bind(server_app=None, client_app=None, num_supernodes=1, backend_config={})
    assert "deprecated" in inspect.getsource(run_simulation)


# -- only the adapter imports internals ------------------------------------------------------
def test_securefed_imports_only_flowers_public_api_outside_the_adapter() -> None:
    """Outside the adapter, every ``from flwr... import`` names a public package and names in its
    ``__all__``, and there is no ``import flwr...`` (the contract in pyproject.toml forbids the
    internal packages; this covers every submodule)."""
    problems = []
    for module, tree in _modules():
        if module == ADAPTER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{module}:{node.lineno}: import {a.name}" for a in node.names
                             if a.name.split(".")[0] == "flwr"]  # fmt: skip
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != "flwr":
                    continue
                if node.module not in fi.PUBLIC_MODULES:
                    problems.append(f"{module}:{node.lineno}: from {node.module} (internal)")
                    continue
                public = set(getattr(importlib.import_module(node.module), "__all__", ()))
                problems += [f"{module}:{node.lineno}: {node.module}.{a.name} is not public"
                             for a in node.names if a.name not in public]  # fmt: skip
    assert not problems, "\n".join(problems)


def test_the_public_modules_have_an_all() -> None:
    for module in fi.PUBLIC_MODULES:
        assert getattr(importlib.import_module(module), "__all__", None), module


# -- the SuperNode's idle poll ---------------------------------------------------------------
def test_the_supernode_loop_still_sleeps_3_s_when_idle() -> None:
    """The patch of securefed.federation.flower_supernode relies on this: if Flower changes its
    main loop, shorten_supernode_idle_poll no longer applies (the launcher then starts Flower
    unpatched and says so) and this test names it."""
    loop = importlib.import_module(fi.SUPERNODE_LOOP)
    source = inspect.getsource(loop.start_client_internal)
    assert source.count("time.sleep(3)") == 1
    assert re.search(r"if run_id is None:\s+# If no message was received, wait for a while\s+"
                     r"time\.sleep\(3\)\s+continue", source)  # fmt: skip
    assert fi.supernode_idle_sleep_present(loop)


def test_the_patch_shortens_only_the_idle_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = importlib.import_module(fi.SUPERNODE_LOOP)
    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    assert fi.shorten_supernode_idle_poll(0.25)
    loop.time.sleep(3)
    loop.time.sleep(0.5)  # the reply wait: unchanged
    assert slept == [0.25, 0.5]
    assert loop.time.monotonic is time.monotonic
    assert fi.shorten_supernode_idle_poll(0.3)  # idempotent (a second patch replaces the first)
    with pytest.raises(ValueError, match="idle_s"):
        fi.shorten_supernode_idle_poll(0)


def test_the_patch_refuses_a_loop_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = importlib.import_module(fi.SUPERNODE_LOOP)

    def start_client_internal() -> None:  # a loop without the fixed sleep
        time.sleep(1)

    monkeypatch.setattr(loop, "start_client_internal", start_client_internal)
    before = loop.time
    assert not fi.shorten_supernode_idle_poll(0.25)
    assert loop.time is before


def test_the_launcher_runs_flowers_supernode_with_the_same_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "securefed.federation.flower_supernode", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--superlink" in proc.stdout and "--node-config" in proc.stdout
    assert "unpatched" not in proc.stderr


# -- the ServerApp's grid --------------------------------------------------------------------
@dataclasses.dataclass
class _Meta:
    reply_to_message_id: str


@dataclasses.dataclass
class _Reply:
    metadata: _Meta


class _SlowGrid:
    """push/pull of a grid whose replies become available ``delay`` s after the push (the
    message ``"lost"`` never gets one, ``None`` is refused by the link)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.pushed_at = 0.0
        self.pulls = 0
        self.waiting: set[str] = set()

    def push_messages(self, messages: Iterable[str]) -> list[str | None]:
        self.pushed_at = time.monotonic()
        ids = [None if m is None else str(m) for m in messages]
        self.waiting = {i for i in ids if i is not None and i != "lost"}
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[_Reply]:
        self.pulls += 1
        assert None not in set(message_ids)
        if time.monotonic() - self.pushed_at < self.delay:
            return []
        ready = [_Reply(_Meta(i)) for i in sorted(self.waiting & set(message_ids))]
        self.waiting.clear()
        return ready

    def send_and_receive(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("FastPollGrid must not use the wrapped grid's own polling")


def test_fast_poll_grid_returns_every_reply_soon_after_it_arrives() -> None:
    inner = _SlowGrid(delay=0.3)
    t0 = time.monotonic()
    replies = FastPollGrid(inner, poll_s=0.05).send_and_receive(["a", "b"], timeout=10)  # type: ignore[arg-type]
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert time.monotonic() - t0 < 1.0  # not Flower's 3 s
    assert inner.pulls >= 2


def test_fast_poll_grid_stops_at_the_timeout_with_what_it_has() -> None:
    inner = _SlowGrid(delay=0.0)
    t0 = time.monotonic()
    grid = FastPollGrid(inner, poll_s=0.05)  # type: ignore[arg-type]
    replies = grid.send_and_receive(["a", "lost", None], timeout=0.3)  # type: ignore[list-item]
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 0.25 <= time.monotonic() - t0 < 1.5
    assert grid.send_and_receive([], timeout=None) == []


def test_only_flowers_deployment_grid_is_replaced() -> None:
    deployment_grid = object.__new__(fi.HttpGrid)  # not connected: only its type matters
    wrapped = fast_polling(deployment_grid)
    assert isinstance(wrapped, FastPollGrid) and wrapped.inner is deployment_grid
    simulation_grid = object.__new__(fi.InMemoryGrid)
    wrapped = fast_polling(simulation_grid)
    assert isinstance(wrapped, FastPollGrid) and wrapped.inner is simulation_grid
    assert wrapped.poll_s == INMEMORY_POLL_S
    other = _SlowGrid(0.0)
    assert fast_polling(other) is other  # type: ignore[arg-type]


def test_a_serverapp_waiting_for_replies_gives_up_once_stopped() -> None:
    """Ctrl-C in a simulation: Flower leaves the ServerApp thread waiting (no timeout) for replies
    that never come; STOP ends the wait at the next poll, so the process can exit."""
    import threading

    from securefed.errors import TrainingError
    from securefed.federation.grid_wrapper import STOP

    inner = _SlowGrid(delay=3600.0)  # never answers
    grid = FastPollGrid(inner, poll_s=0.01)  # type: ignore[arg-type]
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            grid.send_and_receive(["a"], timeout=None)  # type: ignore[list-item]
        except TrainingError as exc:
            raised.append(exc)

    STOP.clear()
    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    try:
        waiter.join(0.2)
        assert waiter.is_alive() and not raised  # waiting, as it should
        STOP.set()
        waiter.join(30)
    finally:
        STOP.clear()
    assert not waiter.is_alive()
    assert raised and "interrupted (Ctrl-C)" in str(raised[0])


def _phase_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: Any) -> Any:
    """``run_simulation_phase`` of one site with Flower's engine replaced by ``engine``."""
    import flwr.simulation

    from securefed.federation import simulation

    monkeypatch.setattr(flwr.simulation, "run_simulation", engine)
    monkeypatch.setattr(simulation, "make_server_app", lambda cfg: None)
    monkeypatch.setattr(simulation, "make_client_app", lambda *a, **k: None)
    cfg = SimpleNamespace(site_ids=[1], aggregation="fedavg", decryptor=None, name="global",
                          out_dir=tmp_path)  # fmt: skip
    sites = [SimpleNamespace(partition_id=1, device="cpu")]
    return lambda: simulation.run_simulation_phase(cfg, sites, None)  # type: ignore[arg-type]


def test_ctrl_c_in_a_simulation_phase_stops_its_serverapp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:

    from securefed.federation.grid_wrapper import STOP

    def interrupted(**_: Any) -> None:
        assert not STOP.is_set()  # cleared for every phase
        raise KeyboardInterrupt

    run_phase = _phase_on(monkeypatch, tmp_path, interrupted)
    STOP.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_phase()
        assert STOP.is_set()
    finally:
        STOP.clear()


# -- the site executor's task client ---------------------------------------------------------
def test_the_task_client_asks_again_for_an_object_not_yet_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from securefed.federation import site_executor

    answers = [SimpleNamespace(object_found=True, object_available=False)] * 3 + [
        SimpleNamespace(object_found=True, object_available=True, object_content=b"x")
    ]
    asked: list[Any] = []

    def pull(self: Any, request: Any) -> Any:
        asked.append(request)
        return answers[len(asked) - 1]

    monkeypatch.setattr(fi.RuntimeHttpClient, "PullObject", pull)
    monkeypatch.setattr(site_executor, "OBJECT_POLL_S", 0.001)
    client = object.__new__(site_executor._TaskClient)
    assert client.PullObject("req").object_content == b"x"
    assert len(asked) == 4
    missing = SimpleNamespace(object_found=False, object_available=False)
    answers[:] = [missing]
    asked.clear()
    assert client.PullObject("req") is missing and len(asked) == 1  # not found: no retry
    answers[:] = [SimpleNamespace(object_found=True, object_available=False)] * 1000
    asked.clear()
    monkeypatch.setattr(site_executor, "OBJECT_WAIT_S", 0.02)
    assert not client.PullObject("req").object_available  # gives up: Flower's retry takes over
    assert 1 < len(asked) < 1000


def test_a_first_ctrl_c_stops_the_phase_after_the_current_step_and_a_second_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real SIGINT while the engine runs: the first sets STOP (the ServerApp gives up and
    Flower's engine returns with the ServerApp's error, here raised in its place), the phase
    ends as an interruption (KeyboardInterrupt: the command exits 130); a second SIGINT raises
    at once."""
    import os
    import signal

    from securefed.errors import TrainingError
    from securefed.federation.grid_wrapper import STOP

    seen: list[bool] = []

    def engine(**_: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            if STOP.is_set():
                break
            time.sleep(0.01)
        seen.append(STOP.is_set())
        raise TrainingError("interrupted (Ctrl-C) while waiting for the sites' replies")

    run_phase = _phase_on(monkeypatch, tmp_path, engine)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            run_phase()
        assert seen == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

        def engine_twice(**_: Any) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGINT)  # the second one raises here
            time.sleep(5)
            raise AssertionError("a second Ctrl-C must stop at once")

        run_phase = _phase_on(monkeypatch, tmp_path, engine_twice)
        with pytest.raises(KeyboardInterrupt):
            run_phase()
    finally:
        signal.signal(signal.SIGINT, previous)
        STOP.clear()


def test_the_connection_file_names_the_study_ca_by_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`federation run --ca-cert tls/ca.pem` (a relative path, as docs/deployment.md writes it):
    Flower refuses a relative ``root-certificates`` in its connection file."""
    from securefed.federation.deployment import Deployment

    monkeypatch.chdir(tmp_path)
    dep = Deployment(work_dir=Path("coordinator"), ca_cert=Path("tls/ca.pem"), start_local=False)
    dep.write_connection()
    text = (tmp_path / "coordinator" / "flwr-home" / "config.toml").read_text()
    assert f'root-certificates = "{tmp_path / "tls" / "ca.pem"}"' in text
    assert dep.work_dir.is_absolute()


def test_a_ctrl_c_as_the_phase_finishes_still_stops_the_study(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os
    import signal

    from securefed.federation.grid_wrapper import STOP

    def engine(**_: Any) -> None:  # the ServerApp finished its last round as Ctrl-C came
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            if STOP.is_set():
                return
            time.sleep(0.01)

    run_phase = _phase_on(monkeypatch, tmp_path, engine)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_phase()
    finally:
        signal.signal(signal.SIGINT, previous)
        STOP.clear()
