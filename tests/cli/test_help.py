"""The command line's shape and its help: every command's --help prints its help text as written
(typer renders help as rich markup, where `[grid]` or `[[sites]]` would vanish), each command
group lives in one module, and the command lines scripts call stay as they are."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
import typer
from typer.testing import CliRunner

import securefed.cli
from securefed.cli import app

runner = CliRunner()

_BRACKETED = re.compile(r"\[+[^\[\]\s]+\]+")
"""A bracketed name in a help text: a TOML table (`[grid]`, `[[sites]]`) or a choice list."""


def _flat(text: str) -> str:
    """Output with rich's line wrapping and panel borders undone."""
    return " ".join(text.replace("│", " ").split())


def _walk(cmd: click.Command, name: str = "") -> Iterator[tuple[str, click.Command]]:
    yield name, cmd
    if isinstance(cmd, click.Group):
        for sub_name, sub in cmd.commands.items():
            yield from _walk(sub, f"{name} {sub_name}".strip())


def _help(name: str) -> str:
    res = runner.invoke(app, [*name.split(), "--help"], terminal_width=250, env={"COLUMNS": "250"})
    assert res.exit_code == 0, (name, res.output)
    return _flat(res.output)


def test_every_help_prints_its_bracketed_names_and_metavars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Render every command's --help and find in it each bracketed name of the raw help strings
    (the commands built without the root's escaping) and each bracketed metavar."""
    with monkeypatch.context() as patched:
        patched.setattr(securefed.cli, "_literal_help", lambda command: None)
        raw = list(_walk(typer.main.get_command(app)))
    seen: set[str] = set()
    for name, cmd in raw:
        texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
        wanted = {token for text in texts for token in _BRACKETED.findall(text)}
        ctx = click.Context(cmd, info_name=name or "securefed")
        for param in cmd.params:
            if not getattr(param, "hidden", False):
                wanted |= set(_BRACKETED.findall(param.make_metavar(ctx)))
        if not wanted:
            continue
        shown = _help(name)
        lost = sorted(token for token in wanted if token not in shown)
        assert not lost, f"`securefed {name} --help` lost {lost}: {shown}"
        seen |= wanted
    # the names the issue found eaten, and a choice list, are among those checked
    presets = "[demo|shifted|fets-like|fets-1251|fets-1251-shifted|public]"
    assert {"[grid]", "[[sites]]", presets} <= seen


def test_the_source_help_strings_stay_plain_text() -> None:
    """The escaping is the root group's: the help strings in the source carry no backslash."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(securefed.cli, "_literal_help", lambda command: None)
        raw = list(_walk(typer.main.get_command(app)))
    for name, cmd in raw:
        for text in [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]:
            assert "\\[" not in text, name
    assert "[[sites]].node_key" in _help("site node-key")
    assert "Grid TOML ([grid] table" in _help("sweep")


def test_pretrain_help_names_both_files_it_writes() -> None:
    shown = _help("pretrain")
    assert "Writes OUT (the weights, .npz) and their provenance next to it" in shown
    assert "(weights.npz -> weights.json)" in shown


# --- one module per command group ----------------------------------------------------------------


def _callbacks(group: typer.Typer) -> Iterator[object]:
    for command in group.registered_commands:
        yield command.callback
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        yield from _callbacks(sub.typer_instance)


def test_each_command_group_lives_in_one_module() -> None:
    modules = {}
    for group in app.registered_groups:
        assert group.typer_instance is not None
        found = {getattr(cb, "__module__", None) for cb in _callbacks(group.typer_instance)}
        assert len(found) == 1, f"`securefed {group.name}` is spread over {sorted(found)}"
        modules[group.name] = found.pop()
    assert modules == {
        "data": "securefed.cli.data",
        "protocol": "securefed.cli.protocol",
        "keys": "securefed.cli.keys",
        "features": "securefed.cli.radiomics",
        "server": "securefed.cli.server",
        "site": "securefed.cli.site",
        "ledger": "securefed.cli.ledger",
        "federation": "securefed.cli.federation",
        "audit": "securefed.cli.audit",
    }


# The command lines as scripts call them (a contract: a move between modules changes none).
COMMAND_LINES = {
    "audit dp": "RUNDIR --out --mechanism --trials --canaries --epsilon --delta --confidence "
    "--unsafe-noise-scale --quick",
    "audit egress": "RUNDIR --differential",
    "audit features": "RUNDIR --truth --data",
    "audit models": "RUNDIR --truth --data --references --reference-steps --update-crops",
    "audit report": "RUNDIR",
    "audit sign": "LOGDIR --key --protocol --passphrase-file",
    "audit verify": "LOGDIR --protocol --ledger --key",
    "cluster": "--features --out PROTOCOL --protocol --truth --embedding --ledgers --unsafe-seed",
    "data check": "ROOT --partitioning -p --full --header-only --workers -j",
    "demo": "--out --protocol --seed --workers -j --open",
    "features bounds": "--features --out --source --low-pct --high-pct --margin",
    "features extract": "--data --out PROTOCOL --protocol --workers -j --partition --strict",
    "features release": "--features --key --server-key --out --site-config --state PROTOCOL "
    "--protocol --passphrase-file --unsafe-seed --partitions",
    "federation coordinate": "PROTOCOL --assignments --out --superlink --ca-cert --insecure "
    "--node-keys --timeout --he-context",
    "federation run": "PROTOCOL --superlink --out --server-key --keys --ca-cert --node-keys "
    "--passphrase-file --insecure --he-context --timeout",
    "keys new": "--role --id --out --kem --passphrase-file",
    "keys show": "PATH",
    "keys tls": "--out --host --days",
    "ledger show": "FOLDER",
    "pilot": "--out --protocol --sites --timeout --network",
    "ledger verify": "FOLDER --server-head",
    "pretrain": "PROTOCOL --data --out --source --steps --lr --seed --force",
    "protocol app-hash": "",
    "protocol check": "PROTOCOL",
    "protocol new": "--out --sites --deployment --from --keys --server-id --reply-slot-s",
    "protocol render": "PROTOCOL --format --out",
    "protocol schema": "",
    "protocol sign": "PROTOCOL --key --passphrase-file --out",
    "protocol verify": "PROTOCOL --sig",
    "run": "PROTOCOL --data --out --truth --stop-after --workers -j --site-configs --device",
    "server collect": "--inbox --key --out --state PROTOCOL --protocol --site-key "
    "--passphrase-file",
    "site he-key deal": "PROTOCOL --site-config --key --public-keys --state --out "
    "--passphrase-file",
    "site he-key open": "PROTOCOL --envelope --site-config --key --state --passphrase-file",
    "site init": "--site-id --trust --out --threshold --ledger-dir --allow-recipient --key",
    "site node-key": "--out",
    "site selftest": "--site-config --work",
    "site status": "PROTOCOL --site-config --work-dir",
    "site supernode": "PROTOCOL --site-config --superlink --data-dir --work-dir --ca-cert "
    "--node-key --assignments --partitions --device --runtime-port --check-only",
    "site verify": "PROTOCOL --site-config",
    "sweep": "PROTOCOL --data --out --truth --grid --workers -j --device",
    "synth": "--out --preset --seed --spacing --workers -j --force",
    "version": "",
}


def test_every_command_line_is_kept() -> None:
    leaves = {
        name: cmd
        for name, cmd in _walk(typer.main.get_command(app))
        if name and not isinstance(cmd, click.Group)
    }
    assert sorted(leaves) == sorted(COMMAND_LINES)
    for name, expected in COMMAND_LINES.items():
        spelled = set()
        for param in leaves[name].params:
            if isinstance(param, click.Argument):
                spelled.add(str(param.name).upper())
            else:
                spelled |= {*param.opts, *param.secondary_opts}
        missing = set(expected.split()) - spelled
        assert not missing, f"`securefed {name}` lost {sorted(missing)}"
    root = typer.main.get_command(app)
    assert root.list_commands(click.Context(root)) == [
        "version", "synth", "pretrain", "cluster", "run", "demo", "pilot", "sweep", "data",
        "protocol", "keys", "features", "server", "site", "ledger", "federation", "audit",
    ], "securefed --help lists other commands, or in another order"  # fmt: skip
