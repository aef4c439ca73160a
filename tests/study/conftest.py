"""Fixtures shared by the study tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.study import TINY

from securefed.data.synth import synthesize


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 institutions x 5 synthetic cases at 6 mm (read-only for the tests that use it)."""
    out = tmp_path_factory.mktemp("fed") / "data"
    synthesize(out, preset=TINY, seed=1)
    return out
