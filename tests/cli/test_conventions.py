"""The command line's shared conventions: the protocol is the positional PROTOCOL argument (with
the old `--protocol FILE` kept as a hidden alias), choices are Enums that click checks, every
worker count is `--workers/-j`, and every parameter is declared `Annotated[...]`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from support.clustering import make_features, write_protocol, write_tables
from typer.models import ParameterInfo
from typer.testing import CliRunner

from securefed.cli import app
from securefed.cli._common import resolve_protocol
from securefed.errors import ConfigError

runner = CliRunner()


def _flat(text: str) -> str:
    """Output with rich's line wrapping and panel borders undone."""
    return " ".join(text.replace("│", " ").split())


def _commands() -> Iterator[tuple[str, click.Command]]:
    """Every leaf command of the real app, with its full name ("features extract")."""

    def walk(cmd: click.Command, name: str) -> Iterator[tuple[str, click.Command]]:
        if isinstance(cmd, click.Group):
            for sub_name, sub in cmd.commands.items():
                yield from walk(sub, f"{name} {sub_name}".strip())
        else:
            yield name, cmd

    yield from walk(typer.main.get_command(app), "")


def _callbacks(typer_app: typer.Typer) -> Iterator[Callable[..., Any]]:
    """The Python functions behind the app's commands, group callbacks included."""
    if typer_app.registered_callback is not None and typer_app.registered_callback.callback:
        yield typer_app.registered_callback.callback
    for command in typer_app.registered_commands:
        assert command.callback is not None
        yield command.callback
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        yield from _callbacks(group.typer_instance)


# --- the protocol: PROTOCOL, or the hidden --protocol alias, exactly one -------------------------


@pytest.fixture
def cluster_inputs(tmp_path: Path) -> tuple[Path, Path]:
    features, _ = write_tables(tmp_path / "feat", make_features(0))
    proto = write_protocol(tmp_path, 'mode = "plain"', 'k = 3\nk_selection = "fixed"')
    return features, proto


def test_cluster_takes_protocol_positionally_or_by_the_hidden_alias(
    tmp_path: Path, cluster_inputs: tuple[Path, Path]
) -> None:
    features, proto = cluster_inputs
    positional = runner.invoke(
        app, ["cluster", str(proto), "--features", str(features), "--out", str(tmp_path / "a")]
    )
    assert positional.exit_code == 0, positional.output
    alias = runner.invoke(
        app,
        ["cluster", "--features", str(features), "--protocol", str(proto), "--out",
         str(tmp_path / "b")],
    )  # fmt: skip
    assert alias.exit_code == 0, alias.output
    assert (tmp_path / "a" / "clusters.csv").read_bytes() == (
        tmp_path / "b" / "clusters.csv"
    ).read_bytes()


def test_cluster_protocol_twice_or_missing_is_a_user_error(
    tmp_path: Path, cluster_inputs: tuple[Path, Path]
) -> None:
    features, proto = cluster_inputs
    out = tmp_path / "out"
    common = ["--features", str(features), "--out", str(out)]
    both = runner.invoke(app, ["cluster", str(proto), "--protocol", str(proto), *common])
    assert both.exit_code == 2, both.output
    assert "the protocol is given twice" in _flat(both.output)
    neither = runner.invoke(app, ["cluster", *common])
    assert neither.exit_code == 2, neither.output
    assert "missing the study protocol" in _flat(neither.output)
    assert not out.exists()


def test_resolve_protocol() -> None:
    a, b = Path("a.toml"), Path("b.toml")
    assert resolve_protocol(a, None) == a
    assert resolve_protocol(None, b) == b
    for positional, option in ((a, b), (None, None)):
        with pytest.raises(ConfigError):
            resolve_protocol(positional, option)


def test_protocol_is_positional_everywhere_and_the_alias_hidden() -> None:
    """Only `demo --protocol` and `pilot --protocol` (a shipped name or a file, optional; the
    pilot's is a contract of the deployment issue) and the audit log commands
    (whose positional is LOGDIR, a contract of the governance issue) have a visible option;
    every hidden `--protocol` alias sits next to a PROTOCOL argument."""
    with_alias = []
    for name, cmd in _commands():
        for param in cmd.params:
            if isinstance(param, click.Option) and "--protocol" in param.opts:
                if name in ("demo", "pilot", "audit verify", "audit sign"):
                    assert not param.hidden
                    continue
                assert param.hidden, name
                with_alias.append(name)
                arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
                assert [p.name for p in arguments][:1] == ["protocol"], name
    assert sorted(with_alias) == [
        "cluster",
        "features extract",
        "features release",
        "server collect",
    ]
    helped = runner.invoke(app, ["cluster", "--help"], terminal_width=200)
    assert helped.exit_code == 0
    assert "PROTOCOL" in helped.output
    assert "--protocol" not in helped.output


# --- choices are Enums: listed in --help, refused by click (exit 2) -----------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["cluster", "p.toml", "--features", "f", "--out", "{out}", "--embedding", "umap"],
         "--embedding"),
        (["run", "p.toml", "--data", "d", "--out", "{out}", "--stop-after", "bogus"],
         "--stop-after"),
        (["synth", "--out", "{out}", "--preset", "nope"], "--preset"),
        (["keys", "new", "--role", "admin", "--id", "x", "--out", "{out}"], "--role"),
        (["keys", "new", "--role", "site", "--id", "x", "--out", "{out}", "--kem", "rsa"],
         "--kem"),
    ],
)  # fmt: skip
def test_a_bad_choice_is_refused_before_the_command_runs(
    tmp_path: Path, args: list[str], option: str
) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, [a.format(out=out) for a in args])
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{option}'" in _flat(res.output)
    assert "is not one of" in _flat(res.output)
    assert not out.exists()


def test_choice_enums_match_the_library() -> None:
    from securefed.cli.keys import Kem, KeyRole
    from securefed.cli.study import Stage
    from securefed.cli.synth import SynthPreset
    from securefed.crypto import KEMS, ROLES
    from securefed.data.synth import PRESETS
    from securefed.study.runner import STAGES

    assert [p.value for p in SynthPreset] == list(PRESETS)
    assert tuple(s.value for s in Stage) == STAGES
    assert tuple(r.value for r in KeyRole) == ROLES
    assert tuple(k.value for k in Kem) == KEMS


def test_choices_are_listed_in_help() -> None:
    res = runner.invoke(app, ["synth", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "[demo|shifted|fets-like|fets-1251|fets-1251-shifted|public]" in res.output
    res = runner.invoke(app, ["cluster", "--help"], terminal_width=200)
    assert "[pca|tsne]" in res.output


# --- one spelling for every shared option --------------------------------------------------------


def test_every_worker_count_is_workers_or_j() -> None:
    seen = []
    for name, cmd in _commands():
        for param in cmd.params:
            if isinstance(param, click.Option) and "--workers" in param.opts:
                assert "-j" in param.opts, name
                seen.append(name)
    assert {"data check", "features extract", "run", "demo", "synth"} <= set(seen)


def test_every_parameter_is_declared_annotated() -> None:
    """`x: Annotated[T, typer.Option(...)] = default`, never `x: T = typer.Option(...)`."""
    callbacks = list(_callbacks(app))
    assert len(callbacks) > 10
    for func in callbacks:
        for param in inspect.signature(func).parameters.values():
            assert not isinstance(param.default, ParameterInfo), (
                f"{func.__module__}.{func.__qualname__}: {param.name}"
            )


def test_fingerprints_print_verbatim() -> None:
    """A certificate fingerprint like "2F:AB:F5" once printed as "2F🆎F5" (rich emoji codes)."""
    from securefed.cli._common import console, err_console

    for c in (console, err_console):
        with c.capture() as cap:
            c.print("ca_sha256 = 2F:AB:F5:ok:E6", highlight=False)
        assert cap.get().strip() == "ca_sha256 = 2F:AB:F5:ok:E6"
