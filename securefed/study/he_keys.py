"""The BFV key dealing of a simulated study (``training.aggregation = "bfv"``).

The decryptor site makes the key (securefed.crypto.bfv.make_key) and keeps it; for every other
training site it seals the key (HPKE to that site's encryption key, signed with its own signing
key) into ``training/he/<site>.sealed``, which the coordinator relays and cannot open; each site
opens its envelope, checking the dealer's pinned signing key, and stores its copy (0600) in its
own folder. The server gets ``training/he/aggregator.ctx``: the parameters only, no secret key
and no public key. What leaves the dealer: the sealed envelopes and the aggregator context.
Done once; a resumed study reuses the keys.
"""

from __future__ import annotations

from pathlib import Path

from securefed.crypto.bfv import load_key, make_key, open_key, seal_key
from securefed.federation.config import SiteSettings
from securefed.federation.he_round import site_key_path
from securefed.fileio import atomic_write_bytes
from securefed.study.cffl import he_context_path
from securefed.study.context import StudyContext

__all__ = ["deal_he_keys"]


def deal_he_keys(ctx: StudyContext, settings: list[SiteSettings]) -> Path:
    """Give every training site its key copy and the server its aggregator context; returns the
    aggregator context's path."""
    proto = ctx.loaded.protocol
    by_pid = {s.partition_id: s for s in ctx.training_sites()}
    dealer_pid = proto.decryptor_partition()
    if dealer_pid is None:
        dealer_pid = min(by_pid)
    dealer = by_pid[dealer_pid]
    paths = {s.partition_id: site_key_path(s, s.ledger_dir) for s in settings}
    server_ctx = he_context_path(ctx.paths.training)
    if server_ctx.is_file() and all(p.is_file() for p in paths.values()):
        return server_ctx
    keys = ctx.keys()
    key = make_key()
    relay = server_ctx.parent
    pin = (dealer.id, keys.public[dealer.id].signing_fingerprint)
    for pid, path in paths.items():
        site = by_pid[pid]
        if pid == dealer_pid:
            atomic_write_bytes(path, key.to_bytes(), mode=0o600)
            continue
        sealed = seal_key(key, dealer=keys.private[dealer.id], recipient=keys.public[site.id],
                          protocol_hash=ctx.loaded.sha256)  # fmt: skip
        envelope = relay / f"{site.id}.sealed"
        atomic_write_bytes(envelope, sealed, mode=0o644)
        # the site's side: open with its own private key, from the pinned dealer only
        mine = open_key(envelope.read_bytes(), recipient=keys.private[site.id], dealer=pin,
                        protocol_hash=ctx.loaded.sha256)  # fmt: skip
        atomic_write_bytes(path, mine.to_bytes(), mode=0o600)
    atomic_write_bytes(server_ctx, load_key(key.to_bytes()).aggregator_bytes(), mode=0o644)
    ctx.log(f"  BFV key dealt by {dealer.id} to {len(paths) - 1} site(s); server: parameters only")
    return server_ctx
