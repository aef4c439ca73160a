"""Fixtures shared by the study tests."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.study import TINY, reference_bounds, tiny_protocol
from typer.testing import CliRunner

from securefed.cli import app
from securefed.data.synth import synthesize


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 institutions x 5 synthetic cases at 6 mm (read-only for the tests that use it)."""
    out = tmp_path_factory.mktemp("fed") / "data"
    synthesize(out, preset=TINY, seed=1)
    return out


def _local_dp_protocol(tmp: Path) -> Path:
    sha = reference_bounds(tmp)
    path = tiny_protocol(tmp)
    data = tomllib.loads(path.read_text())
    data["release"] = {
        "mode": "local-dp", "mechanism": "gaussian", "epsilon": 4.0, "delta": 1e-6,
        "bounds": {"file": "bounds.json", "sha256": sha}, "projection": "random",
        "dimension": 4, "projection_seed": 3,
    }  # fmt: skip
    data["clustering"]["scaling"] = "declared-bounds"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


@pytest.fixture(scope="session")
def dp_rundir(tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local-dp study of the tiny federation up to clustering."""
    tmp = tmp_path_factory.mktemp("egress")
    rundir = tmp / "run"
    res = CliRunner().invoke(app, ["run", str(_local_dp_protocol(tmp)), "--data",
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
