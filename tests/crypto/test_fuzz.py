"""Fuzzing sealed messages: random byte flips and truncations are never accepted."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefed.crypto import generate_keys
from securefed.errors import EnvelopeError
from securefed.transport import ReplayGuard, SendCounter, open_message, seal_message

PROTO = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    site = generate_keys("site", "site-1")
    servers = [
        generate_keys("server", "server"),
        generate_keys("server", "server", "mlkem768-x25519"),
    ]
    counters = SendCounter(root / "site")
    envelopes = []
    rng = np.random.default_rng(1)
    for i in range(40):
        server = servers[i % 2]
        arrays = {"x": rng.normal(size=(rng.integers(1, 8), 5)), "n": np.arange(3, dtype=np.int32)}
        env = seal_message(
            arrays,
            sender=site,
            recipient=server.public,
            protocol_hash=PROTO,
            stage="features",
            counters=counters,
            meta={"i": i},
        )
        envelopes.append((env, server))
    return {
        "site": site,
        "envelopes": envelopes,
        "senders": {"site-1": site.public.signing_fingerprint},
        "guard": ReplayGuard(root / "server"),
    }


def _rejected(world, data: bytes, server) -> None:
    with pytest.raises(EnvelopeError):
        open_message(
            data,
            recipient=server,
            senders=world["senders"],
            protocol_hash=PROTO,
            stage="features",
            guard=world["guard"],
        )


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hypothesis_flips_and_truncations(world, data):
    idx = data.draw(st.integers(0, len(world["envelopes"]) - 1))
    env, server = world["envelopes"][idx]
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(0, len(env) - 1))
        mask = data.draw(st.integers(1, 255))
        bad = bytearray(env)
        bad[pos] ^= mask
        _rejected(world, bytes(bad), server)
    else:
        cut = data.draw(st.integers(0, len(env) - 1))
        _rejected(world, env[:cut], server)


def test_random_multi_byte_flips(world):
    rnd = random.Random(7)
    for _ in range(3000):
        env, server = rnd.choice(world["envelopes"])
        bad = bytearray(env)
        for _ in range(rnd.randint(1, 4)):
            bad[rnd.randrange(len(bad))] ^= rnd.randint(1, 255)
        if bytes(bad) == env:
            continue
        _rejected(world, bytes(bad), server)


def test_nothing_was_accepted_and_originals_still_open(world):
    guard = world["guard"]
    assert guard.last("site-1", "features") == 0
    for env, server in world["envelopes"]:
        msg = open_message(
            env,
            recipient=server,
            senders=world["senders"],
            protocol_hash=PROTO,
            stage="features",
            guard=guard,
        )
        assert msg.meta["i"] >= 0
