"""Array codec: round trips, numeric dtypes only, strict parsing."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefed.errors import EnvelopeError, VersionError
from securefed.transport import ALLOWED_DTYPES, CodecError, decode_arrays, encode_arrays


def _rebuild(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<4sHI", b"SFCD", 1, len(raw)) + raw + body


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<I", data, 6)
    return json.loads(data[10 : 10 + n]), data[10 + n :]


@settings(max_examples=60, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in ALLOWED_DTYPES] + [np.dtype(">f8")]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_roundtrip_property(arr):
    out = decode_arrays(encode_arrays({"a": arr}, {"k": 1})).arrays["a"]
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype.newbyteorder("=")
    np.testing.assert_array_equal(out, arr)


def test_many_arrays_and_meta():
    arrays = {f"layer.{i}/w": np.full((i, 2), i, dtype=np.float32) for i in range(10)}
    dec = decode_arrays(encode_arrays(arrays, {"names": ["x"], "n": 3, "f": 0.5, "z": None}))
    assert list(dec.arrays) == list(arrays)
    assert dec.meta == {"names": ["x"], "n": 3, "f": 0.5, "z": None}


@pytest.mark.parametrize(
    "value", [np.array(["a"]), np.array([True]), np.array([1 + 2j]), np.array([object()])]
)
def test_non_numeric_refused(value):
    with pytest.raises(CodecError, match="not allowed"):
        encode_arrays({"a": value})


def test_meta_must_be_plain_json():
    with pytest.raises(CodecError, match="NaN"):
        encode_arrays({}, {"x": float("nan")})
    with pytest.raises(CodecError, match="not plain JSON"):
        encode_arrays({}, {"x": b"bytes"})


def test_strict_parsing():
    good = encode_arrays({"a": np.arange(4, dtype="<i4"), "b": np.ones(2)})
    header, body = _split(good)
    assert decode_arrays(_rebuild(header, body)).arrays["a"].tolist() == [0, 1, 2, 3]
    with pytest.raises(CodecError, match="trailing"):
        decode_arrays(good + b"\0")
    with pytest.raises(CodecError, match="past the end"):
        decode_arrays(good[:-1])
    with pytest.raises(CodecError, match="magic"):
        decode_arrays(b"XXXX" + good[4:])
    with pytest.raises(VersionError):
        decode_arrays(good[:4] + struct.pack("<H", 9) + good[6:])
    for field, value, match in [
        ("dtype", "|O", "not allowed"),
        ("dtype", "<U4", "not allowed"),
        ("shape", [5], "nbytes"),
        ("shape", [-4], "shape"),
        ("offset", 8, "contiguous"),
        ("nbytes", 10**12, "nbytes"),
        ("name", "../x", "name"),
    ]:
        h = json.loads(json.dumps(header))
        h["arrays"][0][field] = value
        with pytest.raises(CodecError, match=match):
            decode_arrays(_rebuild(h, body))
    h = json.loads(json.dumps(header))
    h["arrays"][1]["name"] = "a"
    with pytest.raises(CodecError, match="repeated"):
        decode_arrays(_rebuild(h, body))
    h = dict(header, extra=1)
    with pytest.raises(CodecError, match="exactly"):
        decode_arrays(_rebuild(h, body))
    with pytest.raises(CodecError, match="JSON"):
        decode_arrays(struct.pack("<4sHI", b"SFCD", 1, 3) + b'{"v' + body)
    with pytest.raises(CodecError, match="JSON"):
        decode_arrays(_rebuild({"v": 1, "meta": {}, "arrays": []}, b"").replace(b"{}", b"NaN"))
    assert issubclass(CodecError, EnvelopeError)


def test_random_bytes_never_crash():
    """A flipped byte is refused with a codec error or decodes to a well-formed payload: the
    declared arrays with every body byte accounted for (never another exception, never a
    silently truncated or re-shaped array)."""
    rng = np.random.default_rng(0)
    good = encode_arrays({"a": np.arange(6.0)}, {"m": [1, 2]})
    body_bytes = np.arange(6.0).nbytes
    refused = decoded = 0
    for _ in range(2000):
        bad = bytearray(good)
        bad[int(rng.integers(len(bad)))] ^= int(rng.integers(1, 256))
        try:
            out = decode_arrays(bytes(bad))
        except (CodecError, VersionError):
            refused += 1
            continue
        decoded += 1
        assert sum(a.nbytes for a in out.arrays.values()) == body_bytes
        assert all(a.shape == (6,) for a in out.arrays.values())
        assert isinstance(out.meta, dict)
    # Flips in the header are caught; flips in the float payload decode (the envelope's AEAD and
    # signature, not the codec, reject those in transit).
    assert refused > 100
    assert decoded > 100
