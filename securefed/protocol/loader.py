"""Load a protocol from TOML, validate it, and compute its canonical form and SHA-256 identity."""

from __future__ import annotations

import difflib
import hashlib
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from securefed.errors import ProtocolError
from securefed.fileio import canonical_json
from securefed.protocol.schema import Protocol

__all__ = [
    "MAX_PROTOCOL_BYTES",
    "LoadedProtocol",
    "canonical_bytes",
    "format_validation_error",
    "load_protocol",
    "parse_protocol",
    "protocol_hash",
]

MAX_PROTOCOL_BYTES = 1_000_000


@dataclass(frozen=True)
class LoadedProtocol:
    """A validated protocol with its identity and where it came from."""

    protocol: Protocol
    sha256: str  # "sha256:<64 hex>"
    path: Path | None
    text: str

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def resolve(self, relative: str) -> Path:
        """Path of a file that ships with the protocol (e.g. the bounds file)."""
        return self.folder / relative


def canonical_bytes(protocol: Protocol) -> bytes:
    """Canonical form: the values that differ from the schema defaults (schema_version always),
    as compact JSON with sorted keys. Writing a default explicitly does not change the hash, and
    fields added later with defaults keep old protocols' hashes."""
    data = _finite(protocol.model_dump(mode="json", exclude_defaults=True))
    data["schema_version"] = protocol.schema_version
    return canonical_json(data, ensure_ascii=False)  # compact, UTF-8 (not ASCII-escaped)


def _finite(value: Any) -> Any:
    """Infinite budgets are written as the strings "inf"/"-inf" (JSON has no infinity)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def protocol_hash(protocol: Protocol) -> str:
    """``sha256:<hex>`` of the canonical form: the protocol's identity."""
    return "sha256:" + hashlib.sha256(canonical_bytes(protocol)).hexdigest()


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid study protocol ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = _unknown_field(err["loc"])
        elif err["type"] == "missing":
            msg = "required field is missing"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def _unknown_field(loc: tuple[int | str, ...]) -> str:
    """The message for an unknown key at ``loc``, with the closest field name of its table
    ("did you mean `global_rounds`?") when one is close enough (difflib)."""
    known = _table_fields(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6) if known else []
    if not close:
        return "unknown field (not in schema v1; check the spelling in protocols/README.md)"
    table = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
    array = any(isinstance(p, int) for p in loc[:-1])
    where = (f"[[{table}]]" if array else f"[{table}]") if table else "the top level"
    return (
        f"unknown field; did you mean `{close[0]}`? "
        f"(protocols/README.md lists the fields of {where})"
    )


def _table_fields(loc: tuple[int | str, ...]) -> list[str]:
    """The field names of the protocol table at ``loc`` (``()``: the top level, ``("sites", 0)``:
    an entry of ``[[sites]]``); empty when ``loc`` is not a table of the schema."""
    model: type[BaseModel] = Protocol
    for part in loc:
        if isinstance(part, int):  # an entry of an array of tables
            continue
        field = model.model_fields.get(part)
        found = _model_of(field.annotation) if field is not None else None
        if found is None:
            return []
        model = found
    return list(model.model_fields)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The schema model inside a field's type (``X``, ``X | None``, ``tuple[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _tuples(value: Any) -> Any:
    """TOML arrays as tuples (the strict schema's sequences are tuples), recursively."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def parse_protocol(data: dict[str, Any], source: str = "<protocol>") -> Protocol:
    """Validate an already-parsed mapping; raises ProtocolError naming each bad field."""
    try:
        return Protocol.model_validate(_tuples(data), strict=True)
    except ValidationError as exc:
        raise ProtocolError(format_validation_error(exc, source)) from exc


def load_protocol(path: str | Path) -> LoadedProtocol:
    """Read, parse and validate a protocol TOML file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ProtocolError(f"{path}: protocol file not found") from exc
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read protocol file ({exc.strerror})") from exc
    if len(raw) > MAX_PROTOCOL_BYTES:
        raise ProtocolError(f"{path}: protocol file is larger than {MAX_PROTOCOL_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{path}: protocol file is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ProtocolError(f"{path}: values nested too deeply to be a study protocol") from exc
    try:
        protocol = parse_protocol(data, str(path))
    except RecursionError as exc:
        raise ProtocolError(f"{path}: values nested too deeply to be a study protocol") from exc
    return LoadedProtocol(protocol=protocol, sha256=protocol_hash(protocol), path=path, text=text)
