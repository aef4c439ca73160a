"""Fixtures shared by the study tests: the tiny federation and runs of it, each made once per
session. The tests that read a run never change it; one that must (an audit writes into
RUNDIR/audit, a resume rewrites the report) works on its own copy (support.study.copy_run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.study import TINY, FinishedStudy, tiny_local_dp_protocol, tiny_protocol
from typer.testing import CliRunner

from securefed.cli import app
from securefed.data.synth import synthesize


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 institutions x 5 synthetic cases at 6 mm (read-only for the tests that use it)."""
    out = tmp_path_factory.mktemp("fed") / "data"
    synthesize(out, preset=TINY, seed=1)
    return out


@pytest.fixture(scope="session")
def dp_rundir(tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local-dp study of the tiny federation up to clustering."""
    tmp = tmp_path_factory.mktemp("egress")
    rundir = tmp / "run"
    res = CliRunner().invoke(app, ["run", str(tiny_local_dp_protocol(tmp)), "--data",
                                   str(tiny_federation), "--out", str(rundir), "--stop-after",
                                   "clustering", "--workers", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return rundir


@pytest.fixture(scope="session")
def plain_rundir(tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain study (the paper's release) of the tiny federation up to clustering."""
    tmp = tmp_path_factory.mktemp("plain")
    rundir = tmp / "run"
    res = CliRunner().invoke(app, ["run", str(tiny_protocol(tmp)), "--data", str(tiny_federation),
                                   "--out", str(rundir), "--stop-after", "clustering",
                                   "--workers", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return rundir


@pytest.fixture(scope="session")
def whole_study(tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory) -> FinishedStudy:
    """`securefed run` through every stage; institution 3 is held out: it trains nothing and is
    scored apart as unseen (read-only for the tests that use it)."""
    tmp = tmp_path_factory.mktemp("whole")
    study = FinishedStudy(tmp / "run", tiny_protocol(tmp, held_out=(3,)), tiny_federation, "")
    res = CliRunner().invoke(app, study.args())
    assert res.exit_code == 0, res.output
    return FinishedStudy(study.rundir, study.protocol, study.data, res.output)
