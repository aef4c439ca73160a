"""The BFV key dealing of a deployment (``training.aggregation = "bfv"``), at the sites.

The decrypting site (``homomorphic.decryptor``, else the listed training site with the lowest
partition id) runs ``securefed site he-key deal``: it makes the key, seals one copy to each other
training site (HPKE to the encryption key the protocol pins for that site, signed with the
dealer's own key, bound to the protocol's hash) and writes the aggregator context (the scheme's
parameters only: no secret and no public key) for the coordinator; its own copy goes last into
its state folder. Each other training site runs ``securefed site he-key open``: it accepts only
an envelope signed by the key the protocol pins for the dealer. Keys are never replaced: a second
key would not open what the other sites encrypt. What leaves the dealer: the sealed copies and
the aggregator context (the coordinator relays the copies and cannot open them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securefed.crypto import PrivateKeys, PublicKeys, load_public_keys
from securefed.crypto.bfv import load_key, make_key, open_key, seal_key
from securefed.errors import ConfigError, KeyError_, SiteTrustError
from securefed.fileio import atomic_write_bytes
from securefed.protocol import LoadedProtocol
from securefed.protocol.schema import SiteSpec

__all__ = ["AGGREGATOR_FILE", "DealtKeys", "deal_key", "envelope_name", "key_path", "open_dealt"]

AGGREGATOR_FILE = "aggregator.ctx"


def key_path(state: Path) -> Path:
    """Where a site keeps its BFV key: ``<state>/he/bfv.key``, the path its SuperNode reads
    when ``state`` is its ledger folder (the site configuration's ``ledger_dir``, else
    ``site supernode --work-dir``; securefed.federation.he_round.site_key_path)."""
    return Path(state) / "he" / "bfv.key"


def envelope_name(site_id: str) -> str:
    return f"{site_id}.bfv-key.sealed"


@dataclass(frozen=True)
class DealtKeys:
    """What ``deal_key`` wrote: the dealer's own key, one envelope per other site, the context."""

    key: Path
    envelopes: dict[str, Path]
    aggregator: Path


def _training_sites(loaded: LoadedProtocol) -> tuple[SiteSpec, list[SiteSpec]]:
    """(the dealer, every listed training site) of a bfv protocol."""
    p = loaded.protocol
    if p.training.aggregation != "bfv":
        raise ConfigError(
            f"training.aggregation is {p.training.aggregation!r}: only a bfv protocol has a key "
            "to deal"
        )
    held = set(p.data.held_out_partitions)
    sites = [s for s in p.sites if s.partition_id not in held]
    dealer_pid = p.decryptor_partition()
    dealer = next((s for s in sites if s.partition_id == dealer_pid), None)
    if dealer is None:
        raise ConfigError(
            "the protocol lists no [[sites]]: the key dealing needs every training site and "
            "its pinned keys"
        )
    return dealer, sites


def _pins(site: SiteSpec) -> tuple[str, str]:
    if site.signing_key is None or site.encryption_key is None:
        raise ConfigError(
            f"sites.{site.id}: signing_key and encryption_key must be pinned for the BFV key "
            "dealing (the fingerprints of its `securefed keys new --role site` keys)"
        )
    return site.signing_key, site.encryption_key


def _not_yet(path: Path) -> None:
    if path.exists():
        raise KeyError_(
            f"{path}: this site already holds a BFV key for the study; a new one would not "
            "decrypt what the other sites encrypt (remove it only to start the study afresh)"
        )


def deal_key(
    loaded: LoadedProtocol,
    dealer_keys: PrivateKeys,
    public_keys: Path,
    state: Path,
    outbox: Path,
) -> DealtKeys:
    """The decryptor's dealing: every other training site's ``<site-id>.pub.json`` under
    ``public_keys`` must carry the fingerprints the protocol pins; nothing is written before
    all of them are checked."""
    dealer, sites = _training_sites(loaded)
    if dealer_keys.party_id != dealer.id:
        raise SiteTrustError(
            f"the protocol's decryptor is {dealer.id}; {dealer_keys.party_id} does not deal the key"
        )
    if dealer_keys.public.signing_fingerprint != _pins(dealer)[0]:
        raise SiteTrustError(
            f"--key: not the signing key the protocol pins for {dealer.id} ({dealer.signing_key})"
        )
    recipients: dict[str, PublicKeys] = {}
    for site in sites:
        if site.id == dealer.id:
            continue
        signing, encryption = _pins(site)
        path = Path(public_keys) / f"{site.id}.pub.json"
        if not path.is_file():
            raise ConfigError(f"{path}: {site.id}'s public keys are missing (its <id>.pub.json)")
        pub = load_public_keys(path, role="site")
        if (pub.party_id, pub.signing_fingerprint, pub.encryption_fingerprint) != (
            site.id, signing, encryption,
        ):  # fmt: skip
            raise SiteTrustError(
                f"{path}: not the keys the protocol pins for {site.id}; refusing to seal to it"
            )
        recipients[site.id] = pub
    own = key_path(state)
    _not_yet(own)
    key = make_key()
    outbox = Path(outbox)
    envelopes = {}
    for sid, pub in recipients.items():
        sealed = seal_key(key, dealer=dealer_keys, recipient=pub, protocol_hash=loaded.sha256)
        envelopes[sid] = outbox / envelope_name(sid)
        atomic_write_bytes(envelopes[sid], sealed, mode=0o644)
    aggregator = outbox / AGGREGATOR_FILE
    atomic_write_bytes(aggregator, key.aggregator_bytes(), mode=0o644)
    atomic_write_bytes(own, key.to_bytes(), mode=0o600)  # last: a failed dealing keeps no key
    return DealtKeys(own, envelopes, aggregator)


def open_dealt(loaded: LoadedProtocol, envelope: Path, site_keys: PrivateKeys, state: Path) -> Path:
    """A training site's copy, from an envelope signed by the protocol's pinned dealer only;
    written to ``key_path(state)`` (0600). Returns that path."""
    dealer, sites = _training_sites(loaded)
    me = next((s for s in sites if s.id == site_keys.party_id), None)
    if me is None or me.id == dealer.id:
        raise SiteTrustError(
            f"{site_keys.party_id} is not a training site that receives the key from {dealer.id}"
        )
    if site_keys.public.encryption_fingerprint != _pins(me)[1]:
        raise SiteTrustError(
            f"--key: not the encryption key the protocol pins for {me.id} ({me.encryption_key})"
        )
    own = key_path(state)
    _not_yet(own)
    key = open_key(
        Path(envelope).read_bytes(), recipient=site_keys, dealer=(dealer.id, _pins(dealer)[0]),
        protocol_hash=loaded.sha256,
    )  # fmt: skip
    atomic_write_bytes(own, key.to_bytes(), mode=0o600)
    load_key(own.read_bytes(), str(own))  # what the SuperNode will read
    return own
