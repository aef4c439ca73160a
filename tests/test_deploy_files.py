"""The shipped service units and container recipe (deploy/) run command lines that exist: every
option a unit or the Dockerfile's example passes to `securefed site supernode` is one of its
options, every flag of the SuperLink unit is one `flower-superlink --help` lists, and what the
Dockerfile copies exists in the repository."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

import typer

from securefed.cli import app

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name)
    return parser


def _supernode_options() -> set[str]:
    site = typer.main.get_command(app).commands["site"]  # type: ignore[attr-defined]
    command = site.commands["supernode"]
    return {opt for p in command.params for opt in p.opts if opt.startswith("--")}


def _securefed_args(line: str) -> list[str]:
    tokens = shlex.split(line)
    i = next(i for i, t in enumerate(tokens) if t.endswith("/securefed") or t == "securefed")
    return tokens[i + 1 :]


def test_the_site_unit_runs_the_supernode_with_its_checks_first() -> None:
    service = _unit("securefed-site.service")["Service"]
    known = _supernode_options()
    for key in ("ExecStartPre", "ExecStart"):
        args = _securefed_args(service[key])
        assert args[:2] == ["site", "supernode"]
        flags = {a for a in args if a.startswith("--")}
        assert flags <= known, flags - known
        assert {"--site-config", "--ca-cert", "--node-key", "--data-dir"} <= flags
    assert "--check-only" in service["ExecStartPre"]
    assert "--check-only" not in service["ExecStart"]
    env = (DEPLOY / "systemd" / "site.env.example").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", service["ExecStart"]))
    assert used <= set(re.findall(r"^(\w+)=", env, re.M))


def test_the_superlink_unit_uses_flags_flower_knows() -> None:
    service = _unit("securefed-superlink.service")["Service"]
    tokens = shlex.split(service["ExecStart"])
    assert tokens[0].endswith("flower-superlink")
    bindir = Path(sys.executable).parent
    help_text = subprocess.run([str(bindir / "flower-superlink"), "--help"], capture_output=True,
                               text=True, check=True, timeout=120).stdout  # fmt: skip
    for flag in (t for t in tokens[1:] if t.startswith("--")):
        assert flag in help_text, flag
    assert "--enable-supernode-auth" in tokens
    assert "--ssl-ca-certfile" in tokens


def test_the_dockerfile_copies_what_exists_and_its_example_is_a_real_command() -> None:
    text = (DEPLOY / "docker" / "site.Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
    example = " ".join(line.lstrip("# ").rstrip("\\").strip()
                       for line in text.splitlines() if line.startswith("#     ")
                       or line.startswith("#       "))  # fmt: skip
    args = example.split("securefed-site", 1)[1].split()
    assert args[:2] == ["site", "supernode"]
    flags = {a for a in args if a.startswith("--")}
    assert flags <= _supernode_options(), flags - _supernode_options()
