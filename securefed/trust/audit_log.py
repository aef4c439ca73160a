"""A party's audit log: append-only, hash-chained JSONL (``LOGDIR/audit.jsonl``) at each site and
at the server, with heads signed by the party's key at every stage end.

It records what the party did, never patient data, file paths or keys: protocol accepted or
refused, features released, envelopes sealed and opened, training rounds and their aggregation,
budget spends and refusals (clustering rounds appear as spends of stage ``clustering``), the
heads other parties sent. Detail values are numbers, booleans or short plain strings without a
path separator; anything else is refused when written.

:func:`verify_audit_log` (``securefed audit verify``) names the first edited, removed, reordered
or truncated entry, checks every signed head, and (with the ledger) that the recorded spends
match the site's ledger and stay within the protocol.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefed.errors import AuditLogError, InternalError
from securefed.fileio import canonical_json, entry_hash, locked_append

if TYPE_CHECKING:  # the ledger writes this log: importing privacy must not load cryptography
    from securefed.crypto import PrivateKeys
    from securefed.protocol.schema import Protocol

__all__ = [
    "AUDIT_FILE",
    "EVENTS",
    "AuditLog",
    "AuditLogError",
    "AuditSummary",
    "log_party",
    "pinned_signer",
    "read_entries",
    "verify_audit_log",
]

AUDIT_FILE = "audit.jsonl"
_VERSION = 1
_GENESIS = "sha256:" + "0" * 64
_DOMAIN = b"securefed-audit-head-v1\x00"
EVENTS = frozenset({
    "protocol-accepted", "protocol-refused", "features-released", "envelope-sealed",
    "envelope-opened", "training-round", "budget-spend", "budget-refused", "site-head", "head",
    "egress-refused", "app-refused", "he-decrypt", "he-decrypt-refused", "reply-slot-overrun",
    "message-refused", "test-requested", "aggregate-opened",
})  # fmt: skip
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_TEXT = re.compile(r"^[A-Za-z0-9 ._:+=@,()'-]{0,240}$")  # no '/' or '\\': no paths
_RELEASE_ID = re.compile(
    r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,80}(/[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,80}){0,4}$"
)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]{40,120}={0,2}$")
_FIELDS = {"v", "seq", "prev", "party", "protocol", "time", "event", "details", "hash"}


def _plain(key: str, value: Any) -> bool:
    """Numbers, booleans and short plain strings; release ids may hold '/' between plain parts
    (``training/global/round-3``), never a leading '/' or '..'."""
    if value is None or isinstance(value, bool | int | float):
        return True
    if not isinstance(value, str):
        return False
    if key == "release_id":
        return _RELEASE_ID.match(value) is not None and ".." not in value
    if key == "signature":  # a signature another party sent (base64), public
        return _BASE64.match(value) is not None
    return _TEXT.match(value) is not None


def _safe(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in details.items():
        if not _KEY.match(key):
            raise InternalError(f"audit log: detail name {key!r} is not allowed")
        if isinstance(value, float) and not math.isfinite(value):
            value = "inf" if value > 0 else "-inf" if value < 0 else "nan"
        if not _plain(key, value):
            raise InternalError(
                f"audit log: detail {key!r} is not a plain value (no paths, data or keys)"
            )
        out[key] = value
    return out


def _hash(entry: dict[str, Any]) -> str:
    return entry_hash(entry)


def _head_message(party: str, seq: int, head: str) -> bytes:
    return _DOMAIN + f"{party}\x00{seq}\x00{head}".encode()


class AuditLog:
    """The audit log of ``party`` in ``folder`` (created on first write)."""

    def __init__(self, folder: str | Path, party: str, protocol_hash: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / AUDIT_FILE
        self.party = party
        self.protocol_hash = protocol_hash

    def record(self, event: str, **details: Any) -> dict[str, Any]:
        """Append one entry (fsync'd); returns it."""
        if event not in EVENTS or event == "head":
            raise InternalError(f"audit log: unknown event {event!r}")
        return self._append(event, _safe(details))

    def sign_head(self, keys: PrivateKeys) -> dict[str, Any]:
        """Close a stage: append a ``head`` entry signing the hash of the last entry with the
        party's key. Returns what another party may record of it (``site-head``).

        AuditLogError (exit 3), nothing written: the log holds another party's entries, or its
        last entry is of another protocol (a head under the wrong protocol would break the log
        for good: every later verification against either protocol fails)."""
        if keys.party_id != self.party:
            raise InternalError(f"audit log of {self.party}: signed with {keys.party_id}'s key")
        with self._locked() as fh:
            entries = _entries(self.path)
            self._check_closable(entries)
            head = entries[-1]["hash"] if entries else _GENESIS
            seq = len(entries)
            signature = keys.sign(_head_message(self.party, seq, head))
            details = {
                "head": head,
                "signature": base64.b64encode(signature).decode(),
                "signer_key": base64.b64encode(keys.public.signing_public).decode(),
            }
            self._write(fh, entries, "head", details)
        return {"party": self.party, "seq": seq, **details}

    def _check_closable(self, entries: list[dict[str, Any]]) -> None:
        if not all(isinstance(e, dict) for e in entries):
            raise AuditLogError(f"{self.path}: not an audit log (edited); nothing written")
        others = sorted({str(e.get("party")) for e in entries} - {self.party})
        if others:
            raise AuditLogError(
                f"{self.path}: the log holds entries of {', '.join(others)}; {self.party} "
                "cannot sign its head (nothing written)"
            )
        last = entries[-1].get("protocol") if entries else None
        if last is not None and last != self.protocol_hash:
            raise AuditLogError(
                f"{self.path}: the log is of protocol {last}, not {self.protocol_hash}; refusing "
                "to sign its head under another protocol (nothing written; pass the protocol "
                "the log was written under)"
            )

    def _append(self, event: str, details: dict[str, Any]) -> dict[str, Any]:
        with self._locked() as fh:
            return self._write(fh, _entries(self.path), event, details)

    def _write(self, fh: Any, entries: list[dict[str, Any]], event: str,
               details: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        entry = {
            "v": _VERSION,
            "seq": len(entries),
            "prev": entries[-1]["hash"] if entries else _GENESIS,
            "party": self.party,
            "protocol": self.protocol_hash,
            # The date only: an entry written when a site's work ends (a refusal after loading,
            # a decryption) would time that work, a function of its data, for the auditor.
            "time": datetime.now(UTC).date().isoformat(),
            "event": event,
            "details": details,
        }
        entry["hash"] = _hash(entry)
        fh.seek(0, os.SEEK_END)
        fh.write(canonical_json(entry) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
        return entry

    def _locked(self) -> Any:
        return locked_append(self.path)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries as written (no verification; a torn last line is left out)."""
    return _entries(path)


def _entries(path: Path) -> list[dict[str, Any]]:
    """The entries as written (no verification: the writer only needs the last hash)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for raw in lines:
        try:
            out.append(json.loads(raw))
        except ValueError:
            break  # a torn last line: verification reports it
    return out


def log_party(folder: str | Path) -> str | None:
    """The party named by the first entry of ``folder/audit.jsonl`` (None: no readable entry;
    :func:`verify_audit_log` then says why)."""
    entries = _entries(Path(folder) / AUDIT_FILE)
    party = entries[0].get("party") if entries and isinstance(entries[0], dict) else None
    return party if isinstance(party, str) else None


def pinned_signer(protocol: Protocol, party: str) -> str | None:
    """The signing-key fingerprint ``protocol`` pins for ``party`` (a listed site's
    ``signing_key``, or the server's), None when it pins none."""
    if party == protocol.server.id:
        return protocol.server.signing_key
    return next((s.signing_key for s in protocol.sites if s.id == party), None)


@dataclass(frozen=True)
class AuditSummary:
    """What a verified log says."""

    party: str
    entries: int
    heads: int
    events: dict[str, int]
    last_spend: float | None


def _fail(path: Path, line: int, what: str) -> AuditLogError:
    return AuditLogError(f"{path} entry {line}: {what}")


def verify_audit_log(
    folder: str | Path,
    *,
    protocol_hash: str | None = None,
    total_epsilon: float | None = None,
    ledger_spent: float | None = None,
    ledger_releases: set[str] | None = None,
    signer: str | None = None,
) -> AuditSummary:
    """Verify ``folder/audit.jsonl``: every entry's hash and chain link and sequence (edited,
    removed, reordered), the log ends with a signed head (truncated), every head's signature
    and one signer throughout (``signer``: its required fingerprint), the protocol (when
    given), and the spends against the ledger: every recorded release is in the ledger, the
    last recorded spend equals the ledger's, and it stays within ``total_epsilon``."""
    path = Path(folder) / AUDIT_FILE
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError as exc:
        raise AuditLogError(f"{path}: no audit log") from exc
    if not lines:
        raise AuditLogError(f"{path}: empty audit log")
    prev, party, keys_seen = _GENESIS, None, set()
    events: dict[str, int] = {}
    heads, last_spend = 0, None
    for i, raw in enumerate(lines, start=1):
        entry = _check_frame(path, i, raw, prev, party, protocol_hash)
        party = entry["party"]
        events[entry["event"]] = events.get(entry["event"], 0) + 1
        if entry["event"] == "head":
            keys_seen.add(_check_head(path, i, entry, signer))
            heads += 1
        elif entry["event"] == "budget-spend":
            last_spend = _check_spend(path, i, entry["details"], ledger_releases, total_epsilon)
        prev = entry["hash"]
    if json.loads(lines[-1])["event"] != "head":
        raise AuditLogError(
            f"{path}: the log ends after entry {len(lines)} without a signed head (truncated, "
            "or a stage did not finish; a finished stage signs its head)"
        )
    if len(keys_seen) > 1:
        raise AuditLogError(f"{path}: heads signed by {len(keys_seen)} different keys")
    if ledger_spent is not None:
        _check_ledger_total(path, last_spend, ledger_spent)
    return AuditSummary(str(party), len(lines), heads, events, last_spend)


def _check_frame(
    path: Path, i: int, raw: bytes, prev: str, party: str | None, protocol_hash: str | None
) -> dict[str, Any]:
    """One line: JSON, fields, own hash (edited), sequence (removed, reordered), chain link."""
    try:
        entry = json.loads(raw)
    except ValueError as exc:
        raise _fail(path, i, "not valid JSON (edited or torn)") from exc
    if not isinstance(entry, dict) or set(entry) != _FIELDS:
        raise _fail(path, i, "fields missing or unexpected (edited)")
    if entry["hash"] != _hash(entry):
        raise _fail(path, i, "its hash does not match its content (edited)")
    if entry["seq"] != i - 1:
        raise _fail(path, i, f"sequence number {entry['seq']}, expected {i - 1} "
                    "(entries removed or reordered)")  # fmt: skip
    if entry["prev"] != prev:
        raise _fail(path, i, "hash chain broken (an entry before it was removed or edited)")
    if party is not None and entry["party"] != party:
        raise _fail(path, i, f"entry of party {entry['party']!r} in {party!r}'s log")
    if protocol_hash is not None and entry["protocol"] != protocol_hash:
        raise _fail(path, i, f"entry of protocol {entry['protocol']}, not {protocol_hash}")
    return entry


def _check_ledger_total(path: Path, last_spend: float | None, ledger_spent: float) -> None:
    logged = last_spend or 0.0
    if logged + 1e-9 < ledger_spent:
        raise AuditLogError(
            f"{path}: the ledger records epsilon {ledger_spent:.6g} spent, the log only "
            f"{logged:.6g} (spends missing from the log)"
        )
    if logged > ledger_spent + 1e-9:
        raise AuditLogError(
            f"{path}: the log records epsilon {logged:.6g} spent, the ledger only "
            f"{ledger_spent:.6g} (the ledger was rolled back)"
        )


def _check_head(path: Path, i: int, entry: dict[str, Any], signer: str | None) -> str:
    from securefed.crypto import fingerprint, verify_ed25519

    d = entry["details"]
    try:
        raw_key = base64.b64decode(str(d.get("signer_key", "")), validate=True)
        signature = base64.b64decode(str(d.get("signature", "")), validate=True)
    except binascii.Error as exc:
        raise _fail(path, i, "corrupt head signature") from exc
    if d.get("head") != entry["prev"]:
        raise _fail(path, i, "the head does not sign the entry before it")
    if len(raw_key) != 32 or not verify_ed25519(
        raw_key, _head_message(entry["party"], entry["seq"], entry["prev"]), signature
    ):
        raise _fail(path, i, "the head's signature does not verify")
    fp = fingerprint("ed25519", raw_key)
    if signer is not None and fp != signer:
        raise _fail(path, i, f"head signed by {fp}, not the party's key {signer}")
    return fp


def _check_spend(
    path: Path,
    i: int,
    details: dict[str, Any],
    releases: set[str] | None,
    total: float | None,
) -> float:
    rid, spent = details.get("release_id"), details.get("epsilon_spent")
    if not isinstance(spent, int | float):
        raise _fail(path, i, "a budget spend without its epsilon")
    if releases is not None and rid not in releases:
        raise _fail(path, i, f"release {rid!r} is not in the site's ledger")
    if total is not None and spent > total + 1e-9:
        raise _fail(path, i, f"spend {spent:.6g} exceeds the protocol's total {total:g}")
    return float(spent)
