"""Every ``securefed`` command line written in the README and docs/ (the deployment walkthrough
included) names a command that exists and only options that command has: a walkthrough an IT
officer types cannot drift from the CLI unnoticed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from securefed.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
ROOT_OPTIONS = {"--quiet", "-q", "--debug", "--help", "--version"}


def _command_lines(path: Path) -> list[tuple[int, str]]:
    """``securefed ...`` lines inside fenced code blocks (continuations joined, comments cut)."""
    out: list[tuple[int, str]] = []
    fenced = False
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.lstrip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if not fenced:
            continue
        line = raw.strip()
        if pending:
            line = pending + " " + line
        elif line.startswith("$ "):
            line = line[2:]
        if not pending and not line.startswith("securefed "):
            continue
        if line.endswith("\\"):
            pending = line[:-1].strip()
            start = start or number
            continue
        out.append((start or number, line))
        pending, start = "", 0
    return out


def _tokens(line: str) -> list[str]:
    line = re.sub(r"\s#.*$", "", line)  # a trailing comment
    for sep in ("|", "&&", ";", ">"):  # the securefed part of a pipeline
        line = line.split(sep)[0]
    try:
        return shlex.split(line)[1:]
    except ValueError:  # an unbalanced quote in prose-like examples: take the words
        return line.split()[1:]


def _resolve(tokens: list[str]) -> tuple[click.Command, list[str], str]:
    """(the command the tokens name, the tokens after it, its name)."""
    cmd: click.Command = typer.main.get_command(app)
    name = ""
    rest = list(tokens)
    while rest and isinstance(cmd, click.Group):
        head = rest[0]
        if head.startswith("-"):
            if head in ROOT_OPTIONS:
                rest.pop(0)
                continue
            break
        sub = cmd.commands.get(head)
        if sub is None:
            break
        cmd, name = sub, f"{name} {head}".strip()
        rest.pop(0)
    return cmd, rest, name


CASES = [(path, number, line) for path in DOCS for number, line in _command_lines(path)]


def test_the_docs_have_command_lines_to_check() -> None:
    deployment = [c for c in CASES if c[0].name == "deployment.md"]
    assert len(CASES) > 40 and len(deployment) >= 10


@pytest.mark.parametrize(("path", "number", "line"), CASES,
                         ids=[f"{p.name}:{n}" for p, n, _ in CASES])  # fmt: skip
def test_each_documented_command_line_matches_the_cli(path: Path, number: int, line: str) -> None:
    cmd, rest, name = _resolve(_tokens(line))
    where = f"{path.relative_to(ROOT)}:{number}: {line}"
    assert not isinstance(cmd, click.Group), f"{where}: no such command ({rest[:1]})"
    options = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    options |= ROOT_OPTIONS
    for token in rest:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in options, f"{where}: `securefed {name}` has no option {flag}"


WALKTHROUGH = ROOT / "benchmarks" / "deployment_walkthrough.sh"
# deployment.md's commands the walkthrough script does not run: bfv key dealing (the demo protocol
# is SecAgg+), the file path's coordinator (the script drives every stage over Flower) and the
# one-command pilot of section 8 (tests/federation/test_pilot.py)
NOT_WALKED = {"site he-key deal", "site he-key open", "federation coordinate", "pilot"}


def _script_commands(path: Path) -> list[tuple[str, set[str]]]:
    """(command name, its options) of every ``securefed`` line of a shell script."""
    found = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("#") or "securefed " not in line:
            continue
        _cmd, rest, name = _resolve(_tokens(line[line.index("securefed ") :]))
        if name:
            found.append((name, {t.split("=", 1)[0] for t in rest if t.startswith("--")}))
    return found


def test_the_walkthrough_script_runs_every_documented_deployment_command() -> None:
    """benchmarks/deployment_walkthrough.sh follows docs/deployment.md (its run is recorded in
    benchmarks/results/deployment-walkthrough.md): each documented command, with the options
    the docs give it (an optional ``[--option]`` aside), is a command of the script."""
    walked = _script_commands(WALKTHROUGH)
    documented = [(n, line) for p, n, line in CASES if p.name == "deployment.md"]
    assert documented
    for number, line in documented:
        _cmd, rest, name = _resolve(_tokens(re.sub(r"\[[^\]]*\]", "", line)))
        if name in NOT_WALKED or not name:
            continue
        wanted = {t.split("=", 1)[0] for t in rest if t.startswith("--")}
        assert any(n == name and wanted <= opts for n, opts in walked), (
            f"docs/deployment.md:{number}: `securefed {name}` with {sorted(wanted)} is not "
            "followed by benchmarks/deployment_walkthrough.sh"
        )
