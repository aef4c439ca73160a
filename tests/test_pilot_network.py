"""The pilot's network (securefed.study.pilot_network): where namespaces are allowed, a site
reaches the SuperLink's address and nothing else (not another site, not this machine's
loopback); everything made is removed, also what a killed pilot left; elsewhere loopback with
its reason, and ``--network netns`` refused before anything starts."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from securefed.errors import ConfigError
from securefed.study import pilot_network
from securefed.study.pilot_network import PilotNetwork, namespaces_unavailable, open_network

UNAVAILABLE = namespaces_unavailable()
needs_namespaces = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"no network namespaces here: {UNAVAILABLE}"
)
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"


def _connects(prefix: tuple[str, ...], host: str, port: int) -> bool:
    return subprocess.run([*prefix, sys.executable, "-c", CONNECT, host, str(port)],
                          capture_output=True).returncode == 0  # fmt: skip


def _listener(host: str) -> socket.socket:
    s = socket.socket()
    s.bind((host, 0))
    s.listen()
    return s


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture
def network(tmp_path: Path) -> Iterator[PilotNetwork]:
    net = open_network(tmp_path, ["site-a", "site-b"], "netns")
    yield net
    net.close()


@needs_namespaces
def test_a_site_reaches_the_superlink_and_nothing_else(network: PilotNetwork) -> None:
    assert network.kind == "netns"
    a, b = network.prefix("site-a"), network.prefix("site-b")
    assert a[:3] == ("ip", "netns", "exec") and a != b
    assert len({network.server_address, *network.site_addresses.values()}) == 3
    with _listener(network.server_address) as server, _listener("127.0.0.1") as local:
        assert _connects(a, network.server_address, server.getsockname()[1])
        assert _connects(b, network.server_address, server.getsockname()[1])
        # this machine's loopback (a loopback pilot's SuperLink) is not the site's loopback
        assert not _connects(a, "127.0.0.1", local.getsockname()[1])
    # site B listens on its own address: site A cannot reach it (isolated bridge ports)
    listen_b = subprocess.Popen(
        [*b, sys.executable, "-c",
         "import socket, sys, time; s = socket.socket(); s.bind((sys.argv[1], 47001)); "
         "s.listen(); print('up', flush=True); time.sleep(30)", network.site_addresses["site-b"]],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listen_b.stdout is not None and listen_b.stdout.readline().strip() == "up"
        assert _connects(b, network.site_addresses["site-b"], 47001)
        assert not _connects(a, network.site_addresses["site-b"], 47001)
    finally:
        listen_b.kill()
        listen_b.wait()
    assert "site-a 10." in network.describe() and "isolated" in network.describe()


@needs_namespaces
def test_close_removes_every_namespace_and_interface(tmp_path: Path) -> None:
    net = open_network(tmp_path, ["s1", "s2", "s3"], "netns")
    names = list(net.namespaces.values())
    assert all(ns in _namespaces() for ns in names)
    assert (tmp_path / "network.json").is_file()
    net.close()
    net.close()  # idempotent
    assert not any(ns in _namespaces() for ns in names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not any(f" {link}" in links or f" {link}@" in links for link in net.links)
    assert not (tmp_path / "network.json").exists()


@needs_namespaces
def test_what_a_killed_pilot_left_is_removed_by_the_next_run(tmp_path: Path) -> None:
    killed = open_network(tmp_path, ["s1", "s2"], "netns")  # never closed: the pilot was killed
    again = open_network(tmp_path, ["s1", "s2"], "netns")
    try:
        listed = _namespaces()
        assert not any(ns in listed for ns in killed.namespaces.values())
        assert all(ns in listed for ns in again.namespaces.values())
    finally:
        again.close()


def test_loopback_where_asked_or_where_namespaces_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = open_network(tmp_path, ["s1", "s2"], "loopback")
    assert net.kind == "loopback" and net.prefix("s1") == ()
    assert set(net.site_addresses.values()) == {"127.0.0.1"} == {net.server_address}
    assert "--network loopback" in net.describe()
    monkeypatch.setattr(pilot_network, "namespaces_unavailable", lambda: "they need root")
    auto = open_network(tmp_path, ["s1", "s2"], "auto")
    assert auto.kind == "loopback" and "they need root" in auto.describe()
    with pytest.raises(ConfigError, match="--network netns.*they need root.*--network loopback"):
        open_network(tmp_path, ["s1", "s2"], "netns")
    with pytest.raises(ConfigError, match="--network bridge: one of auto, netns, loopback"):
        open_network(tmp_path, ["s1", "s2"], "bridge")  # type: ignore[arg-type]


@needs_namespaces
def test_a_site_that_cannot_reach_the_superlink_means_loopback_and_nothing_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []

    def firewalled(network: PilotNetwork) -> None:
        made.extend(network.namespaces.values())
        raise OSError("site-a cannot reach 10.0.0.1 from its namespace (a firewall?)")

    monkeypatch.setattr(pilot_network, "_check_reach", firewalled)
    lines: list[str] = []
    net = open_network(tmp_path, ["site-a", "site-b"], "auto", log=lines.append)
    assert net.kind == "loopback" and "setting them up failed" in net.describe()
    assert any("a firewall?" in line and "using loopback" in line for line in lines)
    assert len(made) == 2 and not any(ns in _namespaces() for ns in made)
    assert not (tmp_path / "network.json").exists()
    with pytest.raises(ConfigError, match="--network netns: setting up the namespaces failed"):
        open_network(tmp_path, ["site-a", "site-b"], "netns")


def test_an_impossible_network_is_refused_before_the_pilot_makes_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from securefed.cli import app

    monkeypatch.setattr(pilot_network, "namespaces_unavailable", lambda: "they need root")
    res = CliRunner().invoke(app, ["pilot", "--out", str(tmp_path / "p"), "--network", "netns"])
    assert res.exit_code == 2, res.output
    assert "they need root" in " ".join(res.output.split())
    assert not (tmp_path / "p").exists()  # nothing synthesized, no keys made
