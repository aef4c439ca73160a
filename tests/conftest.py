"""Shared test configuration: no network, no telemetry, small thread counts; the markers that
`make test-fast` deselects, given by folder (support/markers.py)."""

import os

import pytest
from support.markers import markers_for_test

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/federation is ``flower``, under tests/study ``study``, in
    tests/test_wheel.py or support.markers.SLOW_TESTS ``slow`` (on top of the marks written in
    the files)."""
    for item in items:
        for name in markers_for_test(item.path, item.nodeid):
            item.add_marker(getattr(pytest.mark, name))
