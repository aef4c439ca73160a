"""What one site process keeps between the coordinator's messages: held by its ClientApp (one
``SiteRuntime`` per ``make_client_app``, so per node process), never shared between two apps.

- the protocols it accepted, each verified by the site's own trust and policy (SITE.toml) before
  any data is touched (a simulation protocol without a site configuration is loaded as is);
- its prepared datasets (per subjects and protocol);
- which model arrays it sends back (from its own protocol, ``training.trainable``);
- its BFV secret keys (``training.aggregation = "bfv"``);
- its signing key (SITE.toml's ``site.key``), which signs its SecAgg+ keys when the protocol pins
  the sites' signing keys;
- its training seeds: from a secret of its own under a deployment protocol;
- the last round it trained in, per protocol and phase (kept in its state folder, ``rounds.json``,
  when it has one): a round is trained in once, rounds only move forward, so a coordinator cannot
  replay a round to another set of sites and subtract the sums.

Flower's simulation engine pickles the ClientApp for every message it hands a Ray actor; a
pickled ``SiteRuntime`` carries only its token and unpickles to the one instance of that token in
the receiving process, so the state above survives from one message to the next there too.

Nothing here leaves the site. Tests: ``tests/federation/test_site_runtime.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefed.crypto import PrivateKeys
from securefed.errors import InstructionRefusedError, SiteTrustError
from securefed.federation.config import SiteSettings
from securefed.fileio import read_json, write_json_atomic
from securefed.protocol import LoadedProtocol
from securefed.trust import AcceptedProtocol

__all__ = ["ROUNDS_FILE", "SECRET_FILE", "SiteRuntime"]

# This process's runtimes by token: those made here (weakly: they live as long as their app) and
# those unpickled here (held for the life of the process, e.g. a simulation's Ray actor).
_CREATED: weakref.WeakValueDictionary[str, SiteRuntime] = weakref.WeakValueDictionary()
_ADOPTED: dict[str, SiteRuntime] = {}


def _runtime_for(token: str) -> SiteRuntime:
    """The runtime of ``token`` in this process (the unpickling side of ``SiteRuntime``)."""
    found = _CREATED.get(token) or _ADOPTED.get(token)
    if found is None:
        found = _ADOPTED[token] = SiteRuntime(token=token)
    return found


ROUNDS_FILE = "rounds.json"
SECRET_FILE = "site-secret.bin"


@dataclass(eq=False)
class SiteRuntime:
    """The per-process state of a site's ClientApp (see the module docstring)."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _protocols: dict[tuple[str, str, int], AcceptedProtocol] = field(default_factory=dict)
    _data: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _sent: dict[tuple[str, Any], tuple[int, ...] | None] = field(default_factory=dict)
    _he_keys: dict[str, Any] = field(default_factory=dict)
    _signing: dict[tuple[str, str], Any] = field(default_factory=dict)
    _rounds: dict[int, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _CREATED[self.token] = self

    def __reduce__(self) -> tuple[Callable[[str], SiteRuntime], tuple[str]]:
        return _runtime_for, (self.token,)

    def accepted(self, site: SiteSettings) -> AcceptedProtocol:
        """The site's protocol, accepted by the site's own trust and policy (node config
        ``site-config``; required for a deployment protocol) before any data is touched."""
        key = (site.protocol, site.site_config, site.partition_id)
        if key not in self._protocols:
            self._protocols[key] = _accept(site)
        return self._protocols[key]

    def data(self, key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
        """A prepared dataset, loaded once per process."""
        if key not in self._data:
            self._data[key] = load()
        return self._data[key]

    def sent_positions(self, task: Any, loaded: LoadedProtocol) -> tuple[int, ...] | None:
        """Which model arrays the site sends back after training, from its own protocol
        (securefed.federation.task.sent_indices; None: all), per protocol and model builder."""
        from securefed.federation.task import sent_indices

        key = (loaded.sha256, task.build_model)
        if key not in self._sent:
            self._sent[key] = sent_indices(task, loaded.protocol.training)
        return self._sent[key]

    def he_key(self, path: Path) -> Any:
        """The site's BFV secret key at ``path``, read once per process."""
        from securefed.federation.he_round import load_site_key

        if str(path) not in self._he_keys:
            self._he_keys[str(path)] = load_site_key(path)
        return self._he_keys[str(path)]

    def signing_key(self, site: SiteSettings) -> PrivateKeys | None:
        """The site's signing key from its SITE.toml, checked against the key the accepted
        protocol pins for it; None when the protocol pins none (a simulation without keys) or
        SITE.toml names none (the SecAgg+ checks then refuse: they need it)."""
        accepted = self.accepted(site)
        if not site.site_config:
            return None
        key = (site.site_config, accepted.sha256)
        if key not in self._signing:
            from securefed.trust import load_site_config
            from securefed.trust.site_key import site_signing_key

            config = load_site_config(Path(site.site_config))
            self._signing[key] = site_signing_key(
                config, site.site_config, accepted.loaded.protocol, required=False
            )
        return self._signing[key]

    def advance_round(
        self, site: SiteSettings, state_dir: str, sha256: str, phase: str, rnd: int
    ) -> None:
        """Record that ``site`` trains in round ``rnd`` of ``phase`` (e.g. ``global``,
        ``cluster-2``) of the protocol; InstructionRefusedError (before any data is touched)
        when it already trained in that round or a later one. One runtime may serve several
        simulated sites: the counters are per site (partition) in memory, per state folder on
        disk."""
        key = f"{sha256}/{phase}"
        path = Path(state_dir) / ROUNDS_FILE if state_dir else None
        known = dict(self._rounds.get(site.partition_id, {}))
        if path is not None and path.is_file():
            for k, v in read_json(path).items():
                known[k] = max(int(v), known.get(k, 0))
        last = known.get(key)
        if last is not None and rnd <= last:
            raise InstructionRefusedError(
                f"the coordinator's message: round {rnd} of {phase}, where this site already "
                f"trained in round {last}: each round is answered once and rounds only move "
                "forward; refusing"
            )
        known[key] = rnd
        self._rounds[site.partition_id] = known
        if path is not None:
            write_json_atomic(path, {k: known[k] for k in sorted(known)})

    def round_seed(
        self, site: SiteSettings, state_dir: str, loaded: LoadedProtocol, phase: str, rnd: int
    ) -> int:
        """The seed of the site's training randomness in round ``rnd`` of ``phase``. Under a
        deployment protocol: from a secret of the site's own (``site-secret.bin`` in its state
        folder, 32 bytes of the OS CSPRNG, created once), so the coordinator neither knows nor
        chooses it. Under a simulation protocol (one operator, reproducible studies): from the
        protocol's seed, the round and the partition."""
        t = loaded.protocol.training
        if loaded.protocol.is_simulation or not state_dir:
            return int(t.seed) + 1000 * int(rnd) + int(site.partition_id)
        secret = _site_secret(Path(state_dir))
        tag = f"{loaded.sha256}/{phase}/{int(rnd)}".encode()
        return int.from_bytes(hmac.new(secret, tag, hashlib.sha256).digest()[:7], "big")


def _site_secret(folder: Path) -> bytes:
    """The site's training-seed secret (created once, mode 0600; never leaves the site)."""
    path = folder / SECRET_FILE
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32))
                fh.flush()
                os.fsync(fh.fileno())
    secret = path.read_bytes()
    if len(secret) != 32:
        raise SiteTrustError(f"{path}: not a 32-byte site secret; delete it only if no study ran")
    return secret


def _accept(site: SiteSettings) -> AcceptedProtocol:
    from securefed.protocol import load_protocol
    from securefed.trust import accept_unsigned_simulation, load_site_config, verify_for_site

    if site.site_config:
        config = load_site_config(Path(site.site_config))
        accepted = verify_for_site(Path(site.protocol), config)
        if accepted.loaded.protocol.partition_of_site(config.site.id) != site.partition_id:
            raise SiteTrustError(
                f"node config partition-id {site.partition_id} is not the partition of "
                f"{config.site.id} in the protocol; refusing"
            )
        return accepted
    loaded = load_protocol(Path(site.protocol))
    if not loaded.protocol.is_simulation:
        raise SiteTrustError(
            f"site {site.partition_id}: a deployment protocol needs the site's own "
            "configuration (node config 'site-config', `securefed site init`)"
        )
    return accept_unsigned_simulation(loaded)
