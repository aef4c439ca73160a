"""The data-layer test builders write readable NIfTI cases."""

from __future__ import annotations

from pathlib import Path

from support.data import make_case


def test_helpers_write_a_readable_case(tmp_path: Path) -> None:
    folder = make_case(tmp_path, "FeTS2022_00001")
    assert len(list(folder.iterdir())) == 5
