"""How the test suite itself is kept: `make test-fast` leaves out Flower/Ray, whole studies and
slow tests by marker, the markers coming from the folder a test lives in (support/markers.py) so
that a new file there is covered too; a browser check without Chromium is a visible skip, never a
silent pass, and CI installs Chromium."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from support.markers import (
    FAST_MARKERS,
    LONG_FILES,
    MARKERS,
    SHARED_SESSION_FILES,
    SLOW_TESTS,
    TESTS,
    markers_for,
    markers_for_test,
    xdist_group_for,
)

ROOT = TESTS.parent

# What starts Flower or Ray, or a whole study, in a test file.
_STARTS_FLOWER_OR_STUDY = re.compile(
    r"run_simulation|loopback_deployment|flower-super(?:link|node)|run_sweep\(|run_study\("
    r'|\[\s*"(?:run|sweep|demo)",[^\]]*"--data"'
)
# Files that match the pattern but start nothing, and why.
_STARTS_NOTHING = {
    "tests/cli/test_conventions.py": "`run ... --stop-after bogus`: refused by click, no stage",
    "tests/test_suite_conventions.py": "this file (the pattern itself)",
    "tests/test_deploy_files.py": "`flower-superlink --help` only (no SuperLink starts)",
}


def test_markers_follow_the_folder() -> None:
    assert markers_for(TESTS / "federation" / "test_new_file.py") == ("flower",)
    assert markers_for(TESTS / "study" / "sub" / "test_x.py") == ("study",)
    assert markers_for(TESTS / "test_wheel.py") == ("slow",)
    assert markers_for(TESTS / "privacy" / "test_noise.py") == ()
    assert markers_for(TESTS / "federation_notes.py") == ()  # a folder name, not a prefix
    assert markers_for(ROOT / "securefed" / "federation" / "app.py") == ()


def test_slow_tests_listed_from_outside_exist_and_are_marked() -> None:
    for nodeid in SLOW_TESTS:
        path, _, name = nodeid.partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), nodeid  # renamed? update the list
        assert "slow" in markers_for_test(ROOT / path, f"{nodeid}[param]")
    assert markers_for_test(TESTS / "privacy" / "test_noise.py", "tests/privacy/x.py::t") == ()


def test_markers_are_registered_and_make_test_fast_deselects_them() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    registered = {m.split(":")[0] for m in config["ini_options"]["markers"]}
    assert set(MARKERS) <= registered
    assert "--strict-markers" in config["ini_options"]["addopts"]
    makefile = (ROOT / "Makefile").read_text()
    fast = re.search(r"^test-fast:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert fast is not None
    assert f'-m "{FAST_MARKERS}"' in fast.group(1)
    full = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert full is not None
    assert ' -m "' not in full.group(1)
    # a worker per core (one more for the whole suite: its pilots mostly wait), a file's tests
    # (and the files sharing a session fixture) together
    assert "-n $(SUITE_WORKERS) --dist loadfile" in full.group(1)
    assert "-n $(FAST_WORKERS) --dist loadfile" in fast.group(1)
    assert "SUITE_WORKERS := $(if $(WORKERS),$(WORKERS),$(shell expr $(CORES) + 1))" in makefile


def test_a_files_tests_share_one_worker_and_so_do_the_files_of_one_session_fixture() -> None:
    assert xdist_group_for(TESTS / "privacy" / "test_noise.py") == "privacy/test_noise.py"
    assert xdist_group_for("tests/privacy/test_noise.py") == "privacy/test_noise.py"  # node id
    for group in LONG_FILES:  # renamed? update the list
        assert (TESTS / group).is_file() or group in SHARED_SESSION_FILES.values(), group
    groups: dict[str, set[str]] = {}
    for rel, group in SHARED_SESSION_FILES.items():
        assert (TESTS / rel).is_file(), rel  # renamed? update the list
        assert xdist_group_for(TESTS / rel) == group
        groups.setdefault(group, set()).add(rel)
    # a session fixture of tests/study/conftest.py made by a run is read by one group's files only
    conftest = (TESTS / "study" / "conftest.py").read_text()
    for fixture in re.findall(r"def (\w+_rundir)\(", conftest):
        users = {p.relative_to(TESTS).as_posix() for p in (TESTS / "study").glob("test_*.py")
                 if re.search(rf"\b{fixture}\b", p.read_text())}  # fmt: skip
        assert len({xdist_group_for(TESTS / u) for u in users}) <= 1, (fixture, users)


def test_every_file_that_starts_flower_or_a_study_is_marked() -> None:
    """Outside tests/federation and tests/study, a test file that starts Flower, Ray or a whole
    study must carry the mark itself (or be listed in support/markers.py)."""
    unmarked = []
    for path in sorted(TESTS.rglob("test_*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT).as_posix()
        if not _STARTS_FLOWER_OR_STUDY.search(text) or markers_for(path):
            continue
        if name not in _STARTS_NOTHING and not re.search(r"pytest\.mark\.(flower|study)", text):
            unmarked.append(name)
    assert unmarked == []


def test_a_missing_browser_is_a_visible_skip() -> None:
    """Browser checks go through support/browser.py (``needs_chromium``, ``require_chromium()``:
    pytest.skip with "chromium not installed: apt-get install chromium"), never through an
    ``if HAVE_CHROMIUM:`` that passes silently; `.ci/run` installs Debian's chromium."""
    silent = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == TESTS / "support" / "browser.py" or path == Path(__file__).resolve():
            continue
        text = path.read_text()
        if re.search(r"if\s+(not\s+)?HAVE_CHROMIUM|which\(\s*[\"']chromium", text):
            silent.append(path.relative_to(ROOT).as_posix())
    assert silent == []
    from support.browser import CHROMIUM_MISSING

    assert CHROMIUM_MISSING == "chromium not installed: apt-get install chromium"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "command -v chromium" in ci
    assert "apt-get install -y chromium" in ci


def test_the_scheduler_keeps_groups_together_and_starts_the_longest_first() -> None:
    from collections import OrderedDict

    from support.scheduling import FileGroupScheduling

    sched = object.__new__(FileGroupScheduling)
    assert sched._split_scope("tests/study/test_egress_census.py::t") == "study-rundirs"
    assert sched._split_scope("tests/study/test_feature_attacks.py::t[a::b]") == "study-rundirs"
    assert sched._split_scope("tests/privacy/test_noise.py::t[1]") == "privacy/test_noise.py"
    sent: list[list[int]] = []
    node = type("Node", (), {"send_runtest_some": lambda self, ids: sent.append(ids)})()
    sched.workqueue = OrderedDict(
        (scope, {f"{scope}::t": False}) for scope in ("a.py", LONG_FILES[1], LONG_FILES[0])
    )
    sched.assigned_work = {}
    sched.registered_collections = {node: [f"{s}::t" for s in sched.workqueue]}
    sched._assign_work_unit(node)
    sched._assign_work_unit(node)
    assert list(sched.assigned_work[node]) == [LONG_FILES[0], LONG_FILES[1]]
    assert sent == [[2], [1]]
