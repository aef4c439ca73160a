"""The study protocol: schema, loading, canonical hash, pinned files and the plain summary."""

from securefed.protocol.loader import (
    LoadedProtocol,
    canonical_bytes,
    load_protocol,
    parse_protocol,
    protocol_hash,
)
from securefed.protocol.pinned import file_sha256, open_pinned, pinned_files
from securefed.protocol.render import summary_lines
from securefed.protocol.schema import FEATURE_CLASSES, MODALITIES, SCHEMA_VERSION, Protocol

__all__ = [
    "FEATURE_CLASSES",
    "MODALITIES",
    "SCHEMA_VERSION",
    "LoadedProtocol",
    "Protocol",
    "canonical_bytes",
    "file_sha256",
    "load_protocol",
    "open_pinned",
    "parse_protocol",
    "pinned_files",
    "protocol_hash",
    "summary_lines",
]
