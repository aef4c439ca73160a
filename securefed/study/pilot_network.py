"""The pilot's network: each site in its own Linux network namespace with its own address, or
every party on loopback where the machine does not allow namespaces.

With namespaces (root and ``ip`` from iproute2): a bridge on this machine holds the SuperLink's
address (``10.X.Y.1/24``, a /24 no interface here uses); each site gets a namespace with its
own loopback and one veth interface on that bridge (``10.X.Y.(10+i)``). The bridge ports are
isolated from each other, so a site reaches the SuperLink and nothing else: not another site,
not this machine's loopback (where the coordinator's SuperLink would otherwise be reachable),
each site's own Runtime API stays on its own loopback. Every name carries the pilot's tag and is
written to ``OUT/network.json`` before it is created, so a pilot killed before its cleanup has
what it left removed by the next run on the same folder.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from securefed.errors import ConfigError
from securefed.fileio import read_json, write_json_atomic

__all__ = [
    "NetworkMode", "PilotNetwork", "check_mode", "namespaces_unavailable", "open_network",
]  # fmt: skip

NetworkMode = Literal["auto", "netns", "loopback"]
STATE_FILE = "network.json"
LOOPBACK = "127.0.0.1"


@dataclass
class PilotNetwork:
    """Where the SuperLink listens and how each site's processes are started."""

    kind: Literal["netns", "loopback"]
    server_address: str
    site_addresses: dict[str, str]
    namespaces: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # host-side interfaces (the bridge last)
    reason: str = ""  # why loopback, when it is
    state_file: Path | None = None  # what was made, for a later run's cleanup

    def prefix(self, site_id: str) -> tuple[str, ...]:
        """The command prefix that starts a process of ``site_id`` in its namespace."""
        ns = self.namespaces.get(site_id)
        return () if ns is None else ("ip", "netns", "exec", ns)

    def describe(self) -> str:
        if self.kind == "netns":
            sites = ", ".join(f"{s} {a} (netns {self.namespaces[s]})"
                              for s, a in self.site_addresses.items())  # fmt: skip
            return (
                f"network namespaces: the SuperLink on {self.server_address} (a bridge on this "
                f"machine), each site in its own namespace with its own address: {sites}; the "
                "bridge ports are isolated, so a site reaches only the SuperLink"
            )
        return (
            f"loopback ({LOOPBACK}): every party is a separate process with its own folders and "
            f"keys, on one network interface; no network namespaces ({self.reason})"
        )

    def close(self) -> None:
        """Remove every namespace and interface made (nothing for loopback); idempotent (the
        names stay, for :meth:`describe`)."""
        _remove(list(self.namespaces.values()), self.links)
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot give the pilot's sites their own network namespaces (None: it
    can; a namespace is made and removed to find out)."""
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "they need root"
    if shutil.which("ip") is None:
        return "they need the `ip` command (iproute2)"
    probe = f"securefed-probe-{os.getpid()}-{random.randrange(1 << 30)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` was refused: {made.stderr.strip()[-200:]}"
    try:  # a container may allow the namespace but not entering it (remounting /sys)
        entered = subprocess.run(["ip", "netns", "exec", probe, "true"], capture_output=True,
                                 text=True)  # fmt: skip
        if entered.returncode != 0:
            return f"`ip netns exec` was refused: {entered.stderr.strip()[-200:]}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def open_network(
    out: Path, site_ids: Sequence[str], mode: NetworkMode = "auto",
    log: Callable[[str], None] = print,
) -> PilotNetwork:  # fmt: skip
    """The pilot's network for ``site_ids``. ``netns``: namespaces or ConfigError (exit 2) with
    the reason; ``loopback``: loopback; ``auto``: namespaces where the machine allows them, else
    loopback with the reason. First removes what a killed pilot in ``out`` left behind."""
    reason = check_mode(mode)
    clean_leftovers(out)
    if reason is not None:
        return _loopback(site_ids, reason)
    try:
        return _namespaces(out, site_ids)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        text = getattr(exc, "stderr", None) or str(exc)
        if mode == "netns":
            raise ConfigError(f"--network netns: setting up the namespaces failed: {text}") from exc
        log(f"network namespaces failed ({str(text).strip()[-200:]}); using loopback")
        return _loopback(site_ids, "setting them up failed")


def check_mode(mode: str) -> str | None:
    """ConfigError (exit 2) for an unknown mode and for ``netns`` where the machine has no
    namespaces (the pilot calls it before it synthesizes anything); else why ``auto`` will use
    loopback (None: it will use namespaces)."""
    if mode not in ("auto", "netns", "loopback"):
        raise ConfigError(f"--network {mode}: one of auto, netns, loopback")
    if mode == "loopback":
        return "--network loopback"
    reason = namespaces_unavailable()
    if reason is not None and mode == "netns":
        raise ConfigError(f"--network netns: this machine has no network namespaces for "
                          f"the pilot ({reason}); use --network loopback")  # fmt: skip
    return reason


def clean_leftovers(out: Path) -> None:
    """Remove the namespaces and interfaces recorded in ``out/network.json`` (a pilot killed
    before its own cleanup)."""
    path = Path(out) / STATE_FILE
    if path.is_file():
        state = read_json(path)
        _remove(list(state.get("namespaces", [])), list(state.get("links", [])))
        path.unlink()


def _loopback(site_ids: Sequence[str], reason: str) -> PilotNetwork:
    return PilotNetwork("loopback", LOOPBACK, dict.fromkeys(site_ids, LOOPBACK), reason=reason)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.X.Y.0/24 that overlaps no address or route of this machine."""
    taken = []
    for cmd in (["ip", "-o", "-4", "addr", "show"], ["ip", "-4", "route", "show"]):
        text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        for word in text.split():
            try:
                taken.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(64, 250)}.{rng.randrange(0, 256)}.0/24")
        if not any(net.overlaps(t) for t in taken if t.version == 4 and t.prefixlen > 0):
            return net
    raise OSError("no free 10.X.Y.0/24 for the pilot's bridge")


def _namespaces(out: Path, site_ids: Sequence[str]) -> PilotNetwork:
    net = _free_subnet()
    hosts = list(net.hosts())
    tag = f"{random.randrange(36**5):05x}"[-5:]
    bridge = f"sfb{tag}"
    state_path = Path(out) / STATE_FILE
    network = PilotNetwork("netns", str(hosts[0]), {}, state_file=state_path)
    names = {sid: f"securefed-{tag}-{i}" for i, sid in enumerate(site_ids)}
    host_links = [f"sfh{tag}{i}" for i in range(len(site_ids))]
    # recorded before anything exists: a pilot killed half-way is cleaned up by the next run
    write_json_atomic(state_path, {"namespaces": list(names.values()),
                                   "links": [*host_links, bridge]})  # fmt: skip
    try:
        _ip("link", "add", bridge, "type", "bridge")
        network.links.append(bridge)
        _ip("addr", "add", f"{hosts[0]}/{net.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, sid in enumerate(site_ids):
            ns, host_side, peer = names[sid], host_links[i], f"sfn{tag}{i}"
            _ip("netns", "add", ns)
            network.namespaces[sid] = ns
            _ip("link", "add", host_side, "type", "veth", "peer", "name", peer)
            network.links.insert(0, host_side)
            _ip("link", "set", peer, "netns", ns)
            _ip("link", "set", host_side, "master", bridge)
            _ip("link", "set", "dev", host_side, "type", "bridge_slave", "isolated", "on")
            _ip("link", "set", host_side, "up")
            address = str(hosts[9 + i])
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", peer)
            _ip("-n", ns, "link", "set", peer, "up")
            network.site_addresses[sid] = address
        _check_reach(network)
    except BaseException:
        network.close()
        raise
    return network


def _check_reach(network: PilotNetwork) -> None:
    """Every site connects to a listener on the SuperLink's address (a host firewall dropping
    the bridge's traffic would otherwise stall the pilot until its stage timeout)."""
    import socket
    import sys

    code = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)"
    with socket.socket() as listener:
        listener.bind((network.server_address, 0))
        listener.listen(len(network.namespaces))
        port = str(listener.getsockname()[1])
        for sid in network.namespaces:
            probe = subprocess.run([*network.prefix(sid), sys.executable, "-c", code,
                                    network.server_address, port], capture_output=True,
                                   text=True, timeout=30)  # fmt: skip
            if probe.returncode != 0:
                raise OSError(f"{sid} cannot reach {network.server_address} from its namespace "
                              f"(a firewall?): {probe.stderr.strip()[-200:]}")  # fmt: skip


def _remove(namespaces: list[str], links: list[str]) -> None:
    for ns in namespaces:  # removes the veth inside, and with it its host-side peer
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for link in links:
        subprocess.run(["ip", "link", "del", link], capture_output=True)
