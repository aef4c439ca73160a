"""The site's egress log: one JSON line for everything that left the site, written at the site
boundary after its guard let it pass (a sealed feature envelope, every Flower reply).

Each entry names the kind (``envelope`` or ``flower-reply``), the stage (``features``,
``training/<phase>/<message type>``, or ``stage/<stage>/<message type>`` for a study stage over
the deployment), the recipient, and every field that left: scalars with
their value, arrays, byte strings and lists by SHA-256 digest with their shape or length (the log
stays at the site; what it holds already left it). The auditor's census
(``securefed audit egress``) reads these logs and checks each field against what the protocol
declares (securefed.audit.egress). Tests: ``tests/study/test_egress_census.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from securefed.fileio import SPACED, canonical_json, canonical_sha256, locked_append

__all__ = ["EGRESS_FILE", "EgressLog", "describe_value", "read_egress_log"]

EGRESS_FILE = "egress.jsonl"
_MAX_TEXT = 200


def describe_value(name: str, value: Any) -> dict[str, Any]:
    """A field as logged: ``{"name", "type", "value"}`` for scalars and short strings, else
    ``{"name", "type", "digest", "size"}`` (and ``shape`` for arrays); every field also has
    ``bytes``, its payload size (8 per number, the raw bytes of arrays, strings and byte lists),
    which the study's wire figures add up."""
    out = _describe(name, value)
    out["bytes"] = _payload_bytes(value)
    return out


def _payload_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list | tuple):
        return sum(_payload_bytes(v) for v in value)
    return 8 if isinstance(value, bool | int | float | np.number) else 0


def _describe(name: str, value: Any) -> dict[str, Any]:
    if value is None or isinstance(value, bool | int):
        return {"name": name, "type": type(value).__name__, "value": value}
    if isinstance(value, float | np.floating):
        v = float(value)
        return {"name": name, "type": "float", "value": v if math.isfinite(v) else str(v)}
    if isinstance(value, np.integer):
        return {"name": name, "type": "int", "value": int(value)}
    if isinstance(value, str) and len(value) <= _MAX_TEXT:
        return {"name": name, "type": "str", "value": value}
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value).tobytes()
        return {"name": name, "type": f"array[{value.dtype}]", "shape": list(value.shape),
                "size": int(value.size), "digest": _digest(data)}  # fmt: skip
    if isinstance(value, bytes | bytearray):
        return {"name": name, "type": "bytes", "size": len(value), "digest": _digest(bytes(value))}
    if isinstance(value, list | tuple):
        digest = _json_digest(_plain(list(value)))
        return {"name": name, "type": "list", "size": len(value), "digest": digest}
    return {"name": name, "type": type(value).__name__, "digest": _json_digest(_plain(value))}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json_digest(value: Any) -> str:
    # json.dumps' default spacing, NaN allowed, repr for the rest: the digests logs already hold
    return canonical_sha256(value, separators=SPACED, allow_nan=True, default=repr)


class EgressLog:
    """The egress log of ``party`` in ``folder`` (created on first write)."""

    def __init__(self, folder: str | Path, party: str, protocol_hash: str) -> None:
        self.path = Path(folder) / EGRESS_FILE
        self.party = party
        self.protocol_hash = protocol_hash

    def record(self, kind: str, stage: str, to: str, fields: list[dict[str, Any]]) -> None:
        entry = {
            "party": self.party,
            "protocol": self.protocol_hash,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "kind": kind,
            "stage": stage,
            "to": to,
            "fields": fields,
        }
        with locked_append(self.path) as fh:
            fh.seek(0, 2)
            fh.write(canonical_json(entry, separators=SPACED, allow_nan=True) + b"\n")
            fh.flush()


def read_egress_log(path: str | Path) -> list[dict[str, Any]]:
    """The entries of an egress log (a missing file: none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
