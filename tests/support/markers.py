"""Which tests `make test-fast` leaves out, decided by where a test lives, so that a new file in
tests/federation or tests/study is covered without anyone remembering a mark.

- ``flower``: every test under tests/federation (they start Flower or Ray: the simulation engine,
  SuperLink and SuperNodes, a deployment);
- ``study``: every test under tests/study (whole studies, sweeps, audits of a study run and the
  session fixtures that run them);
- ``slow``: tests/test_wheel.py (builds and installs the wheel), the tests of SLOW_TESTS below
  (in files this list marks from outside), plus the tests marked ``@pytest.mark.slow`` where
  they are.

`make test` runs everything; `make test-fast` runs ``-m "not slow and not flower and not study"``
(FAST_MARKERS)."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "FAST_MARKERS",
    "LONG_FILES",
    "MARKERS",
    "SHARED_SESSION_FILES",
    "SLOW_TESTS",
    "TESTS",
    "markers_for",
    "markers_for_test",
    "xdist_group_for",
]

TESTS = Path(__file__).resolve().parents[1]

MARKERS = ("slow", "flower", "study")
FAST_MARKERS = " and ".join(f"not {m}" for m in MARKERS)

# A folder under tests/ (every file below it) or one file, and the markers its tests get.
_BY_PATH: dict[str, tuple[str, ...]] = {
    "federation": ("flower",),
    "study": ("study",),
    "test_wheel.py": ("slow",),
}


def markers_for(path: str | Path) -> tuple[str, ...]:
    """The markers every test in the file ``path`` gets from where it lives (may be empty)."""
    try:
        rel = Path(path).resolve().relative_to(TESTS)
    except ValueError:  # not under tests/
        return ()
    found: list[str] = []
    for prefix, marks in _BY_PATH.items():
        if rel.parts[: len(Path(prefix).parts)] == Path(prefix).parts:
            found += [m for m in marks if m not in found]
    return tuple(found)


# Tests marked slow from here rather than in their files (folders other work owns: training; new
# files under way), with the wall time `make test-fast` measured for them on the 2-core VM
# (2026-12-07, benchmarks/results/tests.md). The marks written in test files are the rule.
SLOW_TESTS: dict[str, str] = {
    "tests/privacy/test_plan_independence.py::test_the_plan_and_its_charges_do_not_depend_on_the_sites_data": "67 s",  # noqa: E501
    "tests/privacy/test_plan_independence.py::test_the_charged_epsilon_matches_an_independent_recomputation": "14 s",  # noqa: E501
    "tests/training/test_baselines.py::test_local_and_finetune": "23 s",
    "tests/training/test_baselines.py::test_centralized_and_cffl_ideal_are_marked_non_private": "10 s",  # noqa: E501
    "tests/training/test_local.py::test_training_reduces_loss_and_evaluates": "9 s",
}


def markers_for_test(path: str | Path, nodeid: str) -> tuple[str, ...]:
    """The markers of one test (``nodeid`` as pytest names it, from the repository root): those
    of its file's place (``markers_for``), and ``slow`` when SLOW_TESTS lists it."""
    marks = markers_for(path)
    if nodeid.split("[")[0] in SLOW_TESTS and "slow" not in marks:
        marks = (*marks, "slow")
    return marks


# Files whose tests read the same costly session fixtures (tests/study/conftest.py: the plain and
# local-dp runs up to clustering); under `make test` (pytest-xdist, support/scheduling.py) they
# run on one worker so that each fixture is made once, not once per worker.
SHARED_SESSION_FILES: dict[str, str] = {
    "study/test_audit_report.py": "study-rundirs",
    "study/test_feature_attacks.py": "study-rundirs",
    "study/test_egress_census.py": "study-rundirs",
}

# The groups that take longest (wall time in `make test`, benchmarks/results/tests.md), longest
# first: `make test` starts them first so that none is left running alone at the end.
LONG_FILES: tuple[str, ...] = (
    "federation/test_pilot_secure.py",
    "federation/test_pilot.py",
    "study/test_e2e.py",
    "federation/test_deployment.py",
    "federation/test_deployment_bfv.py",
    "study/test_sweep.py",
    "federation/test_simulation.py",
    "study/test_stages.py",
    "study-rundirs",
)


def xdist_group_for(path: str | Path) -> str:
    """The pytest-xdist work unit of every test in the file ``path`` (absolute, or relative to
    the repository root as in a pytest node id): its SHARED_SESSION_FILES group, else the file
    itself (relative to tests/)."""
    full = Path(path) if Path(path).is_absolute() else TESTS.parent / path
    try:
        rel = full.resolve().relative_to(TESTS).as_posix()
    except ValueError:  # not under tests/
        return str(path)
    return SHARED_SESSION_FILES.get(rel, rel)
