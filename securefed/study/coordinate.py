"""The coordinator's side of a real deployment: CFFL's federated phases on a running SuperLink
whose SuperNodes are the hospitals (each with its own data, protocol copy and clusters.csv).

The coordinator holds no site data: it knows each site by the node key the protocol pins for it
(``[[sites]].node_key``), registers exactly those keys with the SuperLink (Flower node
authentication) and reads, from clusters.csv, which sites hold train cases of which cluster (to
form one federation per cluster). A deployment protocol needs TLS and every site's node key."""

from __future__ import annotations

from pathlib import Path

from securefed.errors import ConfigError
from securefed.federation.config import SiteSettings
from securefed.federation.deployment import Deployment
from securefed.protocol import LoadedProtocol
from securefed.study.cffl import StudyPhases, run_cffl_phases

__all__ = ["LOOPBACK", "coordinate_deployment", "open_deployment", "remote_sites"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def coordinate_deployment(
    loaded: LoadedProtocol,
    assignments: Path,
    out_dir: Path,
    *,
    superlink: str,
    ca_cert: Path | None,
    insecure: bool = False,
    node_keys: Path | None = None,
    run_timeout_s: float = 1800.0,
    he_context: Path | None = None,
) -> StudyPhases:
    """Run the global phase, then one phase per cluster, on the SuperLink at ``superlink``
    (``host:port``); the connection's checks are :func:`open_deployment`'s."""
    deployment = open_deployment(
        loaded, out_dir, superlink=superlink, ca_cert=ca_cert, insecure=insecure,
        node_keys=node_keys, run_timeout_s=run_timeout_s, he_context=he_context,
    )  # fmt: skip
    return run_cffl_phases(
        loaded, remote_sites(loaded), Path(assignments), Path(out_dir), engine="deployment",
        deployment=deployment,
    )  # fmt: skip


def remote_sites(loaded: LoadedProtocol) -> list[SiteSettings]:
    """The protocol's sites as the coordinator knows them: partition ids only (their paths and
    settings are at the sites)."""
    return [SiteSettings(partition_id=s.partition_id, data_dir="", protocol="")
            for s in loaded.protocol.sites]  # fmt: skip


def open_deployment(
    loaded: LoadedProtocol,
    out_dir: Path,
    *,
    superlink: str,
    ca_cert: Path | None,
    insecure: bool = False,
    node_keys: Path | None = None,
    run_timeout_s: float = 1800.0,
    he_context: Path | None = None,
) -> Deployment:
    """The running SuperLink at ``superlink`` (``host:port``) with the sites' node keys
    registered. TLS is required (``ca_cert``: the study CA that signed the SuperLink's
    certificate); ``insecure`` is accepted for a loopback address and a simulation protocol only.
    ``node_keys``: a folder of the sites' ``<site-id>.pub`` node keys, each checked against the
    protocol's pin and registered with the SuperLink (required for a deployment protocol).
    ``he_context`` (bfv): the aggregator context from the decrypting site's key dealing
    (`securefed site he-key deal`); it holds no key, and a file holding one is refused."""
    host, sep, port = superlink.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--superlink {superlink!r}: expected HOST:PORT")
    bfv = loaded.protocol.training.aggregation == "bfv"
    if bfv and he_context is None:
        raise ConfigError(
            "--he-context is required for a bfv protocol: the aggregator.ctx that the decrypting "
            "site's `securefed site he-key deal` wrote (docs/deployment.md)"
        )
    if not bfv and he_context is not None:
        raise ConfigError("--he-context is for a bfv protocol only")
    context = _read_he_context(Path(he_context)) if bfv and he_context is not None else b""
    if ca_cert is None and not insecure:
        raise ConfigError("--ca-cert is required (TLS to the SuperLink); see docs/deployment.md")
    if ca_cert is not None and insecure:
        raise ConfigError("give either --ca-cert or --insecure, not both")
    if insecure and host not in LOOPBACK:
        raise ConfigError(
            f"--insecure is refused for {host}: only a loopback SuperLink may skip TLS"
        )
    deployment_mode = not loaded.protocol.is_simulation
    if insecure and deployment_mode:
        raise ConfigError(
            "--insecure is refused for a 'deployment' protocol: TLS is mandatory (use the "
            "study CA, also on loopback)"
        )
    if ca_cert is not None and not Path(ca_cert).is_file():
        raise ConfigError(f"--ca-cert {ca_cert}: file not found")
    if not loaded.protocol.sites:
        raise ConfigError(
            "the protocol lists no [[sites]]: a deployment needs every site by partition id"
        )
    if node_keys is None and deployment_mode:
        raise ConfigError(
            "--node-keys is required for a 'deployment' protocol: the folder of the sites' "
            "<site-id>.pub node keys to register (SuperNode authentication)"
        )
    pubs = _site_node_keys(loaded, Path(node_keys)) if node_keys is not None else {}
    deployment = Deployment(
        work_dir=Path(out_dir) / "coordinator",
        address=host,
        port=int(port),
        start_local=False,
        ca_cert=Path(ca_cert) if ca_cert is not None else None,
        run_timeout_s=run_timeout_s,
    )
    if bfv:  # every check passed: now the context goes where each phase reads it
        _install_he_context(context, Path(out_dir))
    for pid, pub in pubs.items():
        deployment.node_sites[deployment.register_node(pub)] = pid
    return deployment


def _read_he_context(path: Path) -> bytes:
    """The dealer's aggregator context, checked: the scheme's parameters without secret or
    public key (anything else is refused)."""
    from securefed.crypto.bfv import load_aggregator_context

    if not path.is_file():
        raise ConfigError(f"--he-context {path}: file not found")
    data = path.read_bytes()
    load_aggregator_context(data, f"--he-context {path}")
    return data


def _install_he_context(context: bytes, out_dir: Path) -> None:
    """Put the aggregator context where every bfv phase reads it; a resumed study must bring
    the same one."""
    from securefed.fileio import atomic_write_bytes
    from securefed.study.cffl import he_context_path

    target = he_context_path(out_dir)  # where run_cffl_phases gives it to every phase
    if target.is_file() and target.read_bytes() != context:
        raise ConfigError(
            f"--he-context: differs from the context this study started with ({target}); the "
            "sites' key would not match"
        )
    atomic_write_bytes(target, context, mode=0o644)


def _site_node_keys(loaded: LoadedProtocol, folder: Path) -> dict[int, Path]:
    """{partition id: node.pub} of every listed site, each matching the protocol's pin."""
    from securefed.crypto.node_key import node_key_fingerprint

    out = {}
    for site in loaded.protocol.sites:
        pub = folder / f"{site.id}.pub"
        if site.node_key is None:
            raise ConfigError(
                f"sites.{site.id}.node_key is not set: the protocol must pin each site's "
                "SuperNode key (`securefed site node-key` prints it)"
            )
        if node_key_fingerprint(pub) != site.node_key:
            raise ConfigError(
                f"{pub}: not the node key the protocol pins for {site.id} ({site.node_key})"
            )
        out[site.partition_id] = pub
    return out
