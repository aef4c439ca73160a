"""The root of the command line: `securefed --version`, --quiet/--debug before or after the
subcommand, Ctrl-C (exit 130, "interrupted; rerun to resume") and the exit codes, all defined
in securefed.errors."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import typer
from support.privacy import COLUMNS, reference_matrix
from typer.testing import CliRunner

from securefed import __version__, errors
from securefed.cli import GLOBAL_FLAGS, app
from securefed.cli._common import INTERRUPTED
from securefed.radiomics.storage import save_table
from securefed.radiomics.table import FeatureTable

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_version_flag_and_subcommand() -> None:
    for args in (["--version"], ["version"], ["--quiet", "--version"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
        assert res.stdout == f"securefed {__version__}\n", args


def _bounds_args(tmp_path: Path) -> list[str]:
    x = reference_matrix(20)
    table = FeatureTable([f"c{i}" for i in range(20)], [1] * 20, ["train"] * 20, COLUMNS, x)
    save_table(table, tmp_path / "feat")
    return ["features", "bounds", "--features", str(tmp_path / "feat"), "--out",
            str(tmp_path / "bounds.json"), "--source", "synthetic, NOT study data"]  # fmt: skip


def test_quiet_before_or_after_the_subcommand(tmp_path: Path) -> None:
    args = _bounds_args(tmp_path)
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0
    assert "reference cases" in loud.stdout
    digest = loud.stdout.split()[-1]
    assert digest.startswith("sha256:")
    assert digest == "sha256:" + hashlib.sha256((tmp_path / "bounds.json").read_bytes()).hexdigest()
    for quiet in (["--quiet", *args], [*args, "--quiet"], [*args[:2], "-q", *args[2:]]):
        res = runner.invoke(app, quiet)
        assert res.exit_code == 0, (quiet, res.output)
        # only the result, no progress line: the pin of the file just written (its
        # created_at has one-second resolution, so a rerun may pin a new digest)
        written = hashlib.sha256((tmp_path / "bounds.json").read_bytes()).hexdigest()
        assert res.stdout == f"sha256:{written}\n", quiet


def test_debug_after_the_subcommand_prints_the_traceback(tmp_path: Path) -> None:
    missing = ["ledger", "show", str(tmp_path / "missing" / "ledger.jsonl")]
    plain = runner.invoke(app, missing)
    assert plain.exit_code == 2
    assert "Traceback" not in plain.output
    for args in (["--debug", *missing], [*missing, "--debug"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2
        assert "no ledger here" in _flat(res.output)
        assert "Traceback" in res.stderr, args


def test_global_flags_after_a_double_dash_are_left_alone() -> None:
    from securefed.cli import _global_flags_first

    assert _global_flags_first(["run", "p.toml", "-q", "--debug"]) == [
        "-q", "--debug", "run", "p.toml"]  # fmt: skip
    assert _global_flags_first(["run", "--", "-q"]) == ["run", "--", "-q"]


def test_no_subcommand_declares_a_global_flag() -> None:
    """The flags are moved in front of the subcommand, so a subcommand must not use them."""

    def walk(cmd: click.Command, name: str) -> list[tuple[str, click.Command]]:
        if isinstance(cmd, click.Group):
            return [c for n, sub in cmd.commands.items() for c in walk(sub, f"{name} {n}")]
        return [(name, cmd)]

    for name, cmd in walk(typer.main.get_command(app), ""):
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert not set(param.opts + param.secondary_opts) & set(GLOBAL_FLAGS), name


def _interrupt(*_args: object, **_kwargs: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path: Path, monkeypatch) -> None:
    import securefed.data.synth

    monkeypatch.setattr(securefed.data.synth, "synthesize", _interrupt)
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "fed"), "--preset", "demo"])
    assert res.exit_code == errors.EXIT_INTERRUPTED == 130
    assert res.stderr.splitlines()[-1] == INTERRUPTED == "interrupted; rerun to resume"
    assert res.stdout == ""
    assert "Traceback" not in res.stderr


def test_ctrl_c_outside_a_wrapped_command_exits_130(monkeypatch) -> None:
    import securefed.cli

    monkeypatch.setattr(securefed.cli, "__version__", None)
    monkeypatch.setattr(securefed.cli.console, "print", _interrupt)
    res = runner.invoke(app, ["version"])  # `version` has no handle_errors: the root's guard
    assert res.exit_code == 130
    assert INTERRUPTED in res.stderr


def test_sigint_in_a_real_process_exits_130(tmp_path: Path) -> None:
    """A real SIGINT (the signal Ctrl-C sends), raised inside the command, through main()."""
    script = tmp_path / "interrupt.py"
    script.write_text(
        textwrap.dedent("""
        import os, signal, sys, time
        import securefed.data.synth
        from securefed.cli import main

        def synthesize(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            # the handler may run a little later (another thread can take the signal): wait
            # for it here rather than return into the caller's use of the result
            for _ in range(600):
                time.sleep(0.05)
            raise SystemExit("no SIGINT arrived in 30 s")

        securefed.data.synth.synthesize = synthesize
        # as in a terminal: a test run in the background inherits SIGINT ignored (job control
        # off), and Python then installs no KeyboardInterrupt handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["securefed", "synth", "--out", sys.argv[1]]
        main()
    """)
    )
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "fed")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert INTERRUPTED in proc.stderr
    assert "Traceback" not in proc.stderr


def test_exit_codes_are_defined_once_and_documented() -> None:
    assert errors.EXIT_CODES == {0: "ok", 1: "internal error", 2: "user error",
                                 3: "security refusal", 4: "audit finding",
                                 5: "a sweep point failed", 130: "interrupted"}  # fmt: skip
    assert errors.UserError.exit_code == errors.EXIT_USER
    assert errors.SecurityError.exit_code == errors.EXIT_SECURITY
    assert errors.AuditFindingError.exit_code == errors.EXIT_AUDIT_FINDING
    assert errors.InternalError.exit_code == errors.EXIT_INTERNAL
    # cli/sweep.py uses the constant and defines no exit code of its own.
    sweep = (ROOT / "securefed" / "cli" / "sweep.py").read_text()
    assert "typer.Exit(EXIT_SWEEP_POINT_FAILED)" in sweep
    assert not re.search(r"^\w+ = 5$", sweep, re.M)
    readme = " ".join((ROOT / "README.md").read_text().split())
    for code, meaning in errors.EXIT_CODES.items():
        assert re.search(rf"\b{code} {meaning}", readme), (code, meaning)
    helped = runner.invoke(app, ["--help"], terminal_width=200)
    assert "130 interrupted" in _flat(helped.output)


@pytest.mark.parametrize("args", [["nonsense"], ["run"]])
def test_usage_errors_stay_exit_2(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2
