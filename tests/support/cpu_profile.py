"""Per-test CPU seconds, for finding what makes the suite slow (benchmarks/results/tests.md):
with SECUREFED_TEST_CPU=FILE each test appends one JSON line ``{"test", "cpu_s", "wall_s"}`` to
FILE: user + system time of the test process and of the children it waited for (Flower's
SuperLink, SuperNodes and ServerApps, Chromium) during the test, setup and teardown included.
Session fixtures count in the first test that uses them."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "SECUREFED_TEST_CPU"


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    target = os.environ.get(ENV)
    if not target:
        yield
        return
    cpu, wall = _cpu(), time.monotonic()
    yield
    line = {"test": item.nodeid, "cpu_s": round(_cpu() - cpu, 2),
            "wall_s": round(time.monotonic() - wall, 2)}  # fmt: skip
    with Path(target).open("a", encoding="utf-8") as fh:  # one short write: workers share it
        fh.write(json.dumps(line) + "\n")
