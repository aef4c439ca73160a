"""Versioned array codec: a JSON header plus raw little-endian arrays. No pickle.

Layout (version 1)::

    b"SFCD" | version u16 | header_len u32 | header (JSON) | data

The header is ``{"v": 1, "meta": {...}, "arrays": [{"name", "dtype", "shape", "offset",
"nbytes"}, ...]}``; offsets are relative to the data section, contiguous and in order, and the
data section ends exactly after the last array. Only numeric little-endian dtypes are accepted
(no objects, strings, bools or structured types); ``meta`` is plain JSON without NaN/Infinity.
Decoding checks every bound before touching the data.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from securefed.errors import CodecError, VersionError
from securefed.fileio import canonical_json

__all__ = [
    "ALLOWED_DTYPES",
    "CODEC_VERSION",
    "CodecError",
    "Decoded",
    "decode_arrays",
    "encode_arrays",
]

CODEC_VERSION = 1
MAGIC = b"SFCD"
_PREFIX = struct.Struct("<4sHI")
MAX_HEADER_BYTES = 1024 * 1024
MAX_ARRAYS = 4096
MAX_NDIM = 16
ALLOWED_DTYPES: tuple[str, ...] = (
    "<f2",
    "<f4",
    "<f8",
    "|i1",
    "<i2",
    "<i4",
    "<i8",
    "|u1",
    "<u2",
    "<u4",
    "<u8",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")


@dataclass(frozen=True)
class Decoded:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _dtype_name(dtype: np.dtype) -> str:
    name = dtype.newbyteorder("<").str if dtype.kind in "fiu" else dtype.str
    if name not in ALLOWED_DTYPES:
        raise CodecError(f"dtype {dtype} is not allowed (only numeric types: {ALLOWED_DTYPES})")
    return name


def _check_meta(value: Any, where: str = "meta", depth: int = 0) -> None:
    if depth > 32:
        raise CodecError(f"{where}: nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise CodecError(f"{where}: NaN/Infinity cannot be encoded")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CodecError(f"{where}: keys must be strings")
            _check_meta(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_meta(v, f"{where}[{i}]", depth + 1)
    elif not isinstance(value, str | int | float | bool | type(None)):
        raise CodecError(f"{where}: {type(value).__name__} is not plain JSON")


def encode_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """Encode named numeric arrays and JSON metadata into bytes (little-endian, C order)."""
    meta_dict = dict(meta or {})
    _check_meta(meta_dict)
    if len(arrays) > MAX_ARRAYS:
        raise CodecError(f"too many arrays ({len(arrays)} > {MAX_ARRAYS})")
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, value in arrays.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CodecError(f"array name {name!r} is not allowed")
        arr = np.asarray(value)
        if arr.ndim > MAX_NDIM:
            raise CodecError(f"array {name}: {arr.ndim} dimensions (max {MAX_NDIM})")
        dname = _dtype_name(arr.dtype)
        data = np.ascontiguousarray(arr, dtype=np.dtype(dname)).tobytes()
        entries.append(
            {
                "name": name,
                "dtype": dname,
                "shape": list(arr.shape),
                "offset": offset,
                "nbytes": len(data),
            }
        )
        chunks.append(data)
        offset += len(data)
    header = canonical_json({"v": CODEC_VERSION, "meta": meta_dict, "arrays": entries})
    if len(header) > MAX_HEADER_BYTES:
        raise CodecError(f"codec header is {len(header)} bytes (max {MAX_HEADER_BYTES})")
    return b"".join([_PREFIX.pack(MAGIC, CODEC_VERSION, len(header)), header, *chunks])


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not allowed")


def decode_arrays(data: bytes | memoryview) -> Decoded:
    """Strictly decode bytes from :func:`encode_arrays` (raises CodecError / VersionError)."""
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise CodecError("payload is shorter than the codec prefix")
    magic, version, header_len = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise CodecError("payload is not securefed codec data (bad magic)")
    if version != CODEC_VERSION:
        raise VersionError(f"codec version {version} is not supported (expected {CODEC_VERSION})")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(view):
        raise CodecError("codec header length is out of bounds")
    try:
        header = json.loads(
            bytes(view[_PREFIX.size : _PREFIX.size + header_len]).decode("utf-8"),
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError("codec header is not valid JSON") from exc
    if not isinstance(header, dict) or set(header) != {"v", "meta", "arrays"}:
        raise CodecError("codec header must have exactly the fields v, meta, arrays")
    if header["v"] != CODEC_VERSION:
        raise VersionError(f"codec header version {header['v']!r} is not supported")
    if not isinstance(header["meta"], dict) or not isinstance(header["arrays"], list):
        raise CodecError("codec header: meta must be an object and arrays a list")
    entries = header["arrays"]
    if len(entries) > MAX_ARRAYS:
        raise CodecError(f"codec header lists {len(entries)} arrays (max {MAX_ARRAYS})")
    body = view[_PREFIX.size + header_len :]
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, entry in enumerate(entries):
        arrays_key = _check_entry(entry, i, offset, len(body), arrays)
        dtype = np.dtype(entry["dtype"])
        chunk = body[offset : offset + entry["nbytes"]]
        arr = np.frombuffer(chunk, dtype=dtype).reshape(entry["shape"]).copy()
        arrays[arrays_key] = arr.astype(dtype.newbyteorder("="), copy=False)
        offset += entry["nbytes"]
    if offset != len(body):
        raise CodecError(f"codec data has {len(body) - offset} trailing bytes")
    return Decoded(arrays=arrays, meta=header["meta"])


def _check_entry(entry: Any, i: int, offset: int, body_len: int, seen: Mapping[str, Any]) -> str:
    where = f"codec array #{i}"
    if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape", "offset", "nbytes"}:
        raise CodecError(f"{where}: must have exactly name, dtype, shape, offset, nbytes")
    name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in seen:
        raise CodecError(f"{where}: invalid or repeated name")
    if dtype not in ALLOWED_DTYPES:
        raise CodecError(f"{where} ({name}): dtype {dtype!r} is not allowed")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise CodecError(f"{where} ({name}): invalid shape")
    nbytes, off = entry["nbytes"], entry["offset"]
    if type(nbytes) is not int or type(off) is not int or off != offset:
        raise CodecError(f"{where} ({name}): offsets must be contiguous and in order")
    if nbytes != math.prod(shape) * np.dtype(dtype).itemsize:
        raise CodecError(f"{where} ({name}): nbytes does not match dtype and shape")
    if off + nbytes > body_len:
        raise CodecError(f"{where} ({name}): data runs past the end of the payload")
    return name
