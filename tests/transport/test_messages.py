"""Sealed messages: round trips and one test per refusal, incl. replay across restarts."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.crypto import TruncatedError, WrongKeyError, generate_keys
from securefed.errors import (
    OversizeError,
    ProtocolError,
    ReplayError,
    TamperError,
    UnknownSenderError,
    VersionError,
    WrongProtocolError,
    WrongStageError,
)
from securefed.protocol import parse_protocol
from securefed.transport import (
    ReplayGuard,
    SendCounter,
    allowed_senders,
    open_message,
    read_message,
    seal_message,
    write_message,
)

P1 = "sha256:" + "1" * 64
P2 = "sha256:" + "2" * 64


@pytest.fixture(scope="module")
def parties():
    return {
        "site": generate_keys("site", "site-1"),
        "other": generate_keys("site", "site-2"),
        "server": generate_keys("server", "server"),
        "pq": generate_keys("server", "server", "mlkem768-x25519"),
    }


def _senders(parties):
    return {"site-1": parties["site"].public.signing_fingerprint}


def _seal(parties, tmp_path, arrays=None, **kw):
    args = {
        "sender": parties["site"],
        "recipient": parties["server"].public,
        "protocol_hash": P1,
        "stage": "features",
        "counters": SendCounter(tmp_path / "site-state"),
    }
    args.update(kw)
    if arrays is None:
        arrays = {"x": np.arange(12, dtype=np.float64).reshape(3, 4)}
    return seal_message(arrays, meta={"columns": ["a", "b", "c", "d"]}, **args)


def _open(parties, tmp_path, data, **kw):
    args = {
        "recipient": parties["server"],
        "senders": _senders(parties),
        "protocol_hash": P1,
        "stage": "features",
        "guard": ReplayGuard(tmp_path / "server-state"),
    }
    args.update(kw)
    return open_message(data, **args)


@pytest.mark.parametrize("recipient", ["server", "pq"])
def test_roundtrip_large(parties, tmp_path, recipient):
    rng = np.random.default_rng(0)
    arrays = {
        "features": rng.normal(size=(500, 372)),
        "weights": rng.normal(size=2_000_000).astype(np.float32),
        "ids": np.arange(500, dtype=np.int64),
    }
    env = _seal(parties, tmp_path, arrays, recipient=parties[recipient].public)
    msg = _open(parties, tmp_path, env, recipient=parties[recipient])
    assert msg.sender == "site-1"
    assert msg.counter == 1
    assert msg.meta == {"columns": ["a", "b", "c", "d"]}
    for k, v in arrays.items():
        assert msg.arrays[k].dtype == v.dtype
        np.testing.assert_array_equal(msg.arrays[k], v)


def test_replay_rejected_across_restart(parties, tmp_path):
    first = _seal(parties, tmp_path)
    second = _seal(parties, tmp_path)
    _open(parties, tmp_path, second)  # counter 2 accepted
    # "restart": new guard objects on the same state folder
    with pytest.raises(ReplayError):
        _open(parties, tmp_path, second)
    with pytest.raises(ReplayError, match="out-of-date"):
        _open(parties, tmp_path, first)  # older, delivered late
    third = _seal(parties, tmp_path)
    assert _open(parties, tmp_path, third).counter == 3
    # sender counters survive a restart too
    assert SendCounter(tmp_path / "site-state").last("server", "features") == 3


def test_counter_not_advanced_on_failure(parties, tmp_path):
    env = bytearray(_seal(parties, tmp_path))
    env[-1] ^= 0x01
    guard = ReplayGuard(tmp_path / "server-state")
    with pytest.raises(TamperError):
        _open(parties, tmp_path, bytes(env))
    assert guard.last("site-1", "features") == 0


def test_advance_later(parties, tmp_path):
    env = _seal(parties, tmp_path)
    msg = _open(parties, tmp_path, env, advance=False)
    guard = ReplayGuard(tmp_path / "server-state")
    assert guard.last("site-1", "features") == 0
    guard.advance(msg.sender, "features", msg.counter)
    with pytest.raises(ReplayError):
        _open(parties, tmp_path, env)


def test_stages_are_independent(parties, tmp_path):
    a = _seal(parties, tmp_path, stage="features")
    b = _seal(parties, tmp_path, stage="metrics")
    _open(parties, tmp_path, a)
    _open(parties, tmp_path, b, stage="metrics")


def test_flipped_byte(parties, tmp_path):
    env = _seal(parties, tmp_path)
    for pos in (len(env) // 2, len(env) - 70, 40):
        bad = bytearray(env)
        bad[pos] ^= 0x80
        with pytest.raises(TamperError):
            _open(parties, tmp_path, bytes(bad))


def test_truncation(parties, tmp_path):
    env = _seal(parties, tmp_path)
    for cut in (0, 5, 10, 100, len(env) - 1):
        with pytest.raises(TruncatedError):
            _open(parties, tmp_path, env[:cut])
    with pytest.raises(TruncatedError):
        _open(parties, tmp_path, env + b"\x00")


def test_wrong_key(parties, tmp_path):
    env = _seal(parties, tmp_path, recipient=parties["pq"].public)
    with pytest.raises(WrongKeyError):
        _open(parties, tmp_path, env)  # sealed to another key of a party named "server"


def test_wrong_protocol(parties, tmp_path):
    env = _seal(parties, tmp_path, protocol_hash=P2)
    with pytest.raises(WrongProtocolError):
        _open(parties, tmp_path, env)


def test_wrong_stage(parties, tmp_path):
    env = _seal(parties, tmp_path, stage="metrics")
    with pytest.raises(WrongStageError):
        _open(parties, tmp_path, env)


def test_unknown_sender(parties, tmp_path):
    env = _seal(parties, tmp_path, sender=parties["other"])
    with pytest.raises(UnknownSenderError, match="not an allowed sender"):
        _open(parties, tmp_path, env)


def test_sender_with_unpinned_key(parties, tmp_path):
    impostor = generate_keys("site", "site-1")  # right name, wrong key
    env = _seal(parties, tmp_path, sender=impostor)
    with pytest.raises(UnknownSenderError, match="fingerprint"):
        _open(parties, tmp_path, env)


def test_unknown_version(parties, tmp_path):
    env = bytearray(_seal(parties, tmp_path))
    env[4] = 2
    with pytest.raises(VersionError):
        _open(parties, tmp_path, bytes(env))


def test_oversize(parties, tmp_path):
    env = _seal(parties, tmp_path)
    with pytest.raises(OversizeError):
        _open(parties, tmp_path, env, max_size=len(env) - 1)
    with pytest.raises(OversizeError):
        _seal(parties, tmp_path, max_size=100)
    path = tmp_path / "msg.sfenv"
    write_message(path, env)
    assert read_message(path) == env
    with pytest.raises(OversizeError):
        read_message(path, max_size=100)


def test_allowed_senders_from_protocol(parties):
    site, server, gov = parties["site"], parties["server"], generate_keys("governance", "board")
    deployment = parse_protocol(
        {
            "schema_version": 1,
            "study": {"name": "t", "mode": "deployment"},
            "privacy": {"total_epsilon": 1.0},
            "training": {"aggregation": "fedavg"},
            "sites": [
                {
                    "id": "site-1",
                    "partition_id": 1,
                    "signing_key": site.public.signing_fingerprint,
                    "encryption_key": site.public.encryption_fingerprint,
                },
                {
                    "id": "site-2",
                    "partition_id": 2,
                    "signing_key": parties["other"].public.signing_fingerprint,
                    "encryption_key": parties["other"].public.encryption_fingerprint,
                },
            ],
            "server": {
                "signing_key": server.public.signing_fingerprint,
                "encryption_key": server.public.encryption_fingerprint,
            },
            "governance": {"signing_key": gov.public.signing_fingerprint},
        }
    )
    table = allowed_senders(deployment, "site")
    assert table == {
        "site-1": site.public.signing_fingerprint,
        "site-2": parties["other"].public.signing_fingerprint,
    }
    assert allowed_senders(deployment, "server") == {"server": server.public.signing_fingerprint}
    with pytest.raises(ProtocolError, match="deployment"):
        allowed_senders(deployment, "site", public_keys=[generate_keys("site", "site-9").public])
    with pytest.raises(ProtocolError, match="do not match"):
        allowed_senders(deployment, "site", public_keys=[generate_keys("site", "site-1").public])

    simulation = parse_protocol(
        {
            "schema_version": 1,
            "study": {"name": "t", "mode": "simulation"},
            "privacy": {"total_epsilon": 1.0},
        }
    )
    with pytest.raises(ProtocolError, match="nobody could send"):
        allowed_senders(simulation, "site")
    assert allowed_senders(simulation, "site", public_keys=[site.public]) == {
        "site-1": site.public.signing_fingerprint
    }


def test_corrupt_counter_state_is_refused(parties, tmp_path):
    from securefed.transport import CounterStateError

    env = _seal(parties, tmp_path)
    state = tmp_path / "server-state"
    state.mkdir()
    guard = ReplayGuard(state)
    guard._path("site-1").write_text("{broken")
    with pytest.raises(CounterStateError, match="corrupt"):
        _open(parties, tmp_path, env)
    (tmp_path / "site-state" / SendCounter.FILE).write_text('{"x": -1}')
    with pytest.raises(CounterStateError):
        _seal(parties, tmp_path)


def test_failed_encoding_does_not_use_a_counter(parties, tmp_path):
    from securefed.transport import CodecError

    with pytest.raises(CodecError):
        _seal(parties, tmp_path, arrays={"s": np.array(["text"])})
    assert SendCounter(tmp_path / "site-state").last("server", "features") == 0
