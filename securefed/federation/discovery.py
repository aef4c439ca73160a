"""Which connected SuperNode serves which site: the coordinator asks every node for its partition
id and protocol hash (a get_properties message) and, with node authentication, keeps a node only
when it is the one registered for that site's key."""

from __future__ import annotations

import time

from flwr.app import Message
from flwr.common import GetPropertiesIns, MessageTypeLegacy
from flwr.serverapp import Grid

from securefed.errors import (
    ConfigError,
    SiteTrustError,
    TooFewParticipantsError,
    WrongProtocolError,
)
from securefed.federation.config import PhaseConfig
from securefed.federation.flower_internals import recorddict_compat as compat

__all__ = ["discover_sites"]


def discover_sites(grid: Grid, cfg: PhaseConfig) -> dict[int, int]:
    """{partition id: node id} of the phase's sites (and, under bfv, of the decryptor), asking
    connected nodes who they are."""
    wanted = set(cfg.site_ids) | ({cfg.decryptor} if cfg.aggregation == "bfv" else set())
    found: dict[int, int] = {}
    asked: set[int] = set()
    mismatched: dict[int, str] = {}
    registered = cfg.registered_nodes  # node authentication: identity is the registered key
    impostors: dict[int, int] = {}
    refusals: dict[int, str] = {}
    deadline = time.monotonic() + cfg.node_wait_s
    while True:
        new = [nid for nid in grid.get_node_ids() if nid not in asked]
        if new:
            content = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
            msgs = [
                Message(
                    content=content,
                    dst_node_id=nid,
                    message_type=MessageTypeLegacy.GET_PROPERTIES,
                    group_id="discover",
                )
                for nid in new
            ]
            wait = max(1.0, min(cfg.timeout_s, deadline - time.monotonic()))
            for reply in grid.send_and_receive(msgs, timeout=wait):
                nid = reply.metadata.src_node_id
                if reply.has_error():  # e.g. the site refused the app bundle (INVALID_FAB)
                    refusals[nid] = str(reply.error.reason)[:300]
                    continue
                asked.add(nid)
                props = compat.recorddict_to_getpropertiesres(reply.content).properties
                pid = int(props["partition-id"])
                if registered and registered.get(nid) != pid:
                    impostors[pid] = nid  # unregistered, or registered for another site
                    continue
                if props.get("protocol-hash") != cfg.protocol_hash:
                    mismatched[pid] = str(props.get("protocol-hash"))
                    continue
                if pid in found and found[pid] != nid:
                    raise ConfigError(
                        f"two SuperNodes claim partition {pid}; check the sites' node configs"
                    )
                found[pid] = nid
        if wanted <= set(found) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    bad = sorted(wanted & set(mismatched))
    if bad:
        raise WrongProtocolError(
            f"{cfg.name}: site(s) {bad} run another protocol than the server "
            f"({cfg.protocol_hash}); distribute the signed protocol again"
        )
    missing = sorted(wanted - set(found))
    claimed = sorted(set(missing) & set(impostors))
    if claimed:
        raise SiteTrustError(
            f"{cfg.name}: node(s) {[impostors[p] for p in claimed]} claim site partition(s) "
            f"{claimed} but are not the nodes registered for them (node-sites); refusing"
        )
    if missing:
        why = "".join(f"; node {n} answered: {r}" for n, r in sorted(refusals.items())[:4])
        raise TooFewParticipantsError(
            f"{cfg.name}: site(s) {missing} did not connect within {cfg.node_wait_s:g} s "
            f"(start their SuperNodes, check --superlink and --node-config partition-id){why}"
        )
    return {pid: found[pid] for pid in sorted(wanted)}
