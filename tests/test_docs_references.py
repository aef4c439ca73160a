"""Every test a document names (``tests/<file>.py`` or ``tests/<file>.py::test_name``, also the
``::test_name`` shorthand after a named file) exists: a claim in the docs points at a real test.
The same holds for the docstrings and comments of securefed's own modules and of the benchmark
scripts."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_REF = re.compile(r"(tests/[\w/]+\.py)?(::(test_\w+))?")
_TOKEN = re.compile(r"`([^`]*(?:tests/|::test_)[^`]*)`")
_SOURCE_REF = re.compile(r"(?<![\w/])(tests/[\w/]+\.py)(?:::(test_\w+))?")
# Stale references in files this test's owner may not edit, with the fix; remove an entry once
# its file is fixed.
_PENDING: dict[tuple[str, str], str] = {}  # (module, test file) -> why, while fixed


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


def _source_references() -> list[tuple[Path, str, str | None]]:
    """``tests/<file>.py[::test_name]`` in the comments and string literals (docstrings
    included) of every module of securefed and every benchmark script."""
    out = []
    modules = [*(ROOT / "securefed").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    for module in sorted(modules):
        tokens = tokenize.generate_tokens(io.StringIO(module.read_text()).readline)
        for tok in tokens:
            if tok.type in (tokenize.COMMENT, tokenize.STRING):
                for file, name in _SOURCE_REF.findall(tok.string):
                    if (str(module.relative_to(ROOT)), file) not in _PENDING:
                        out.append((module, file, name or None))
    return out


def _check(refs: list[tuple[Path, str, str | None]]) -> None:
    for where, file, name in refs:
        path = ROOT / file
        label = where.relative_to(ROOT)
        assert path.is_file(), f"{label}: {file} does not exist"
        if name:
            assert re.search(rf"^(async )?def {name}\(", path.read_text(), re.M), (
                f"{label}: {file}::{name} does not exist"
            )


def test_named_tests_exist() -> None:
    refs = _references()
    assert len(refs) > 30  # the docs do name their tests
    _check(refs)


def test_tests_named_in_docstrings_and_comments_exist() -> None:
    refs = _source_references()
    assert len(refs) > 20  # the modules do name their tests
    _check(refs)
