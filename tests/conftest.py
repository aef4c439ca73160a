"""Shared test configuration: no network, no telemetry, small thread counts; the markers that
`make test-fast` deselects, given by folder (support/markers.py); Flower's simulation engine
without Ray (support/inprocess.py) unless a test asks for ``real_ray``."""

import os
from collections.abc import Iterator

import pytest
from support.cpu_profile import pytest_runtest_protocol  # noqa: F401  (SECUREFED_TEST_CPU=FILE)
from support.markers import markers_for_test

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# One thread per pytest-xdist worker (`make test` runs one worker per core), two otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/federation is ``flower``, under tests/study ``study``, in
    tests/test_wheel.py or support.markers.SLOW_TESTS ``slow`` (on top of the marks written in
    the files)."""
    for item in items:
        if "\\x" in item.nodeid:
            # pytest-xdist compares the workers' collections by name: an id made of raw bytes
            # (a gzip header carries its mtime) can differ between workers and stop the suite.
            raise pytest.UsageError(f"{item.nodeid}: give this parametrized case an explicit id")
        for name in markers_for_test(item.path, item.nodeid):
            item.add_marker(getattr(pytest.mark, name))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`make test` (``-n auto --dist loadfile``): files on workers by support/scheduling.py."""
    if config.getvalue("dist") != "loadfile":
        return None
    from support.scheduling import FileGroupScheduling

    return FileGroupScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _unwrapped_console() -> Iterator[None]:
    """The CLI's consoles 300 columns wide for the whole session: Rich wraps a message at the
    terminal's width (80 under CliRunner), so where a tmp path broke a line depended on the
    path's length and a test's ``"is not empty" in output`` passed on one machine and failed on
    another."""
    from securefed.cli import _common

    widths = _common.console.width, _common.err_console.width
    _common.console.width = _common.err_console.width = 300
    yield
    _common.console.width, _common.err_console.width = widths


@pytest.fixture(scope="session", autouse=True)
def _flower_without_ray(request: pytest.FixtureRequest) -> Iterator[None]:
    """The simulation engine runs the ClientApps in this process (support/inprocess.py) for the
    whole session, session fixtures included; installed only when the session selected a test
    marked ``flower`` or ``study`` (`make test-fast` imports no Flower for it). With
    SECUREFED_TEST_RAY=1 every simulation runs on Ray, as outside the tests."""
    if os.environ.get("SECUREFED_TEST_RAY") == "1" or not any(
        item.get_closest_marker("flower") or item.get_closest_marker("study")
        for item in request.session.items
    ):
        yield
        return
    from support.inprocess import use_inprocess_backend

    with use_inprocess_backend():
        yield


@pytest.fixture
def real_ray() -> Iterator[None]:
    """Flower's own Ray backend for this test (the one real-Ray simulation the suite keeps)."""
    from support.inprocess import real_ray_backend

    with real_ray_backend():
        yield
