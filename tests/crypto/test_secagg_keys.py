"""Signed SecAgg+ keys (securefed.crypto.secagg_keys): a neighbour's keys are accepted only when
signed, for that node and protocol, by the key the protocol pins for a distinct site."""

from __future__ import annotations

import os

import pytest

from securefed.crypto import generate_keys
from securefed.crypto.secagg_keys import (
    KeySignatureError,
    SignedKeys,
    sign_secagg_keys,
    verify_secagg_keys,
)

H = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def sites():
    return {sid: generate_keys("site", sid) for sid in ("site-1", "site-2", "site-3")}


def _setup(sites, protocol_hash=H):
    keys = {100 + i: (os.urandom(32), os.urandom(32)) for i in range(1, 4)}
    signed = {nid: sign_secagg_keys(sites[f"site-{nid - 100}"], protocol_hash, nid, *keys[nid])
              for nid in keys}  # fmt: skip
    pinned = {sid: k.public.signing_fingerprint for sid, k in sites.items()}
    return keys, signed, pinned


def test_honest_signatures_verify_and_name_each_nodes_site(sites) -> None:
    keys, signed, pinned = _setup(sites)
    assert verify_secagg_keys(keys, signed, pinned, H) == {101: "site-1", 102: "site-2",
                                                          103: "site-3"}  # fmt: skip
    # the ConfigRecord form round-trips
    back = {nid: SignedKeys.from_list(s.to_list()) for nid, s in signed.items()}
    assert verify_secagg_keys(keys, back, pinned, H)


def test_keys_the_coordinator_made_are_refused(sites) -> None:
    """A Sybil neighbour: fresh keys the coordinator generated, unsigned or signed by a key of
    its own that claims a pinned site's id."""
    keys, signed, pinned = _setup(sites)
    keys[104] = (os.urandom(32), os.urandom(32))
    with pytest.raises(KeySignatureError, match="no site signature"):
        verify_secagg_keys(keys, signed, pinned, H)
    impostor = generate_keys("site", "site-2")
    signed[104] = sign_secagg_keys(impostor, H, 104, *keys[104])
    with pytest.raises(KeySignatureError, match="not the signing key pinned"):
        verify_secagg_keys(keys, signed, pinned, H)
    stranger = generate_keys("site", "site-9")
    signed[104] = sign_secagg_keys(stranger, H, 104, *keys[104])
    with pytest.raises(KeySignatureError, match="not a site pinned"):
        verify_secagg_keys(keys, signed, pinned, H)


def test_a_replayed_signature_is_refused(sites) -> None:
    """A real site's signed keys shown under a second node id, with swapped or foreign keys, or
    from another protocol."""
    keys, signed, pinned = _setup(sites)
    keys2 = {**keys, 104: keys[102]}
    with pytest.raises(KeySignatureError, match="bad signature"):
        verify_secagg_keys(keys2, {**signed, 104: signed[102]}, pinned, H)
    swapped = {**keys, 102: (keys[102][1], keys[102][0])}
    with pytest.raises(KeySignatureError, match="bad signature"):
        verify_secagg_keys(swapped, signed, pinned, H)
    other = "sha256:" + "cd" * 32
    with pytest.raises(KeySignatureError, match="bad signature"):
        verify_secagg_keys(keys, signed, pinned, other)


def test_one_site_cannot_fill_two_neighbour_places(sites) -> None:
    keys, signed, pinned = _setup(sites)
    keys[104] = (os.urandom(32), os.urandom(32))
    signed[104] = sign_secagg_keys(sites["site-2"], H, 104, *keys[104])
    with pytest.raises(KeySignatureError, match="two neighbour nodes"):
        verify_secagg_keys(keys, signed, pinned, H)


@pytest.mark.parametrize("bad", [None, [b"a", b"b"], [b"\xff", b"k", b"s"], ["a", b"k", b"s"]])
def test_malformed_entries_are_refused(bad) -> None:
    with pytest.raises(KeySignatureError):
        SignedKeys.from_list(bad)
