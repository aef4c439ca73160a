"""Every test a document names (``tests/<file>.py`` or ``tests/<file>.py::test_name``, also the
``::test_name`` shorthand after a named file) exists: a claim in the docs points at a real test."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_REF = re.compile(r"(tests/[\w/]+\.py)?(::(test_\w+))?")
_TOKEN = re.compile(r"`([^`]*(?:tests/|::test_)[^`]*)`")


def _references() -> list[tuple[Path, str, str | None]]:
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        last_file = None
        for token in _TOKEN.findall(doc.read_text()):
            for part in token.replace(",", " ").split():
                m = _REF.fullmatch(part)
                if not m or not (m.group(1) or m.group(3)):
                    continue
                file = m.group(1) or last_file
                last_file = file
                if file is not None:
                    out.append((doc, file, m.group(3)))
    return out


def test_named_tests_exist() -> None:
    refs = _references()
    assert len(refs) > 30  # the docs do name their tests
    for doc, file, name in refs:
        path = ROOT / file
        assert path.is_file(), f"{doc.name}: {file} does not exist"
        if name:
            assert re.search(rf"^(async )?def {name}\(", path.read_text(), re.M), (
                f"{doc.name}: {file}::{name} does not exist"
            )
