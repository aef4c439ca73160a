"""Server role, feature stage: open every sealed feature envelope in an inbox and build the
collected table.

Each envelope must verify (pinned sender, signature, protocol hash, stage ``features``, size,
version, fresh counter) and its content must be consistent: the sender's own partition only, the
protocol's released columns, finite values, no subject id sent twice. Collection is all or nothing:
if any envelope is refused, nothing is written and the replay guard does not advance, so the
operator can remove the bad file and collect again. What the server holds afterwards is exactly
the released rows (see ``securefed.site.release``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefed.crypto import PrivateKeys, PublicKeys
from securefed.data.partitions import valid_subject_id
from securefed.errors import DataError, EnvelopeError, KeyError_, SecurefedError, SecurityError
from securefed.fileio import atomic_write_bytes as write_atomic
from securefed.privacy.protection import FEATURES_STAGE, released_columns
from securefed.protocol import LoadedProtocol
from securefed.server.ledger_heads import LedgerHeads, SiteHead
from securefed.transport import (
    OpenedMessage,
    ReplayGuard,
    allowed_senders,
    open_message,
    read_message,
)
from securefed.trust.audit_log import AuditLog

__all__ = ["CollectedFeatures", "CollectionRefused", "collect_features", "load_collected"]

FEATURES_FILE = "features.csv"
MANIFEST_FILE = "manifest.json"
_ID_COLUMNS = ("subject_id", "partition_id", "split")


class CollectionRefused(SecurityError):
    """One or more envelopes were refused; nothing was collected."""

    code = "SF146"

    def __init__(self, problems: list[tuple[str, SecurefedError]]) -> None:
        lines = [f"  {name}: [{err.code}] {err}" for name, err in problems]
        super().__init__(
            f"{len(problems)} envelope(s) refused, nothing collected:\n"
            + "\n".join(lines)
            + "\nRemove or replace the refused file(s) and collect again."
        )
        self.problems = problems
        self.exit_code = max(err.exit_code for _, err in problems)


@dataclass
class CollectedFeatures:
    """The server's table of released features (what the sites sent, nothing more)."""

    subject_ids: list[str]
    partition_ids: list[int]
    splits: list[str]
    columns: list[str]
    values: np.ndarray
    senders: dict[str, dict[str, Any]] = field(default_factory=dict)


def _content_problem(
    msg: OpenedMessage,
    loaded: LoadedProtocol,
    columns: list[str] | None,
    expected_columns: tuple[str, ...],
) -> str | None:
    meta = msg.meta
    values = msg.arrays.get("values")
    if meta.get("kind") != "features" or values is None or set(msg.arrays) != {"values"}:
        return "not a feature release (unexpected payload)"
    if meta.get("site") != msg.sender:
        return f"payload names site {meta.get('site')!r} but was signed by {msg.sender!r}"
    expected = loaded.protocol.partition_of_site(msg.sender)
    if expected is None or meta.get("partition_id") != expected:
        return (
            f"sent cases of partition {meta.get('partition_id')!r}, but {msg.sender} is "
            f"partition {expected} under the protocol: a site may only send its own cases"
        )
    ids, splits = meta.get("subject_ids"), meta.get("splits")
    if not isinstance(ids, list) or not isinstance(splits, list) or len(ids) != len(splits):
        return "subject ids and splits missing or of different lengths"
    bad = next((s for s in ids if not valid_subject_id(s)), None)
    if bad is not None or not ids:
        return f"subject id {bad!r} is not a case folder name (letters, digits, '.', '_', '-')"
    if meta.get("columns") != list(expected_columns):
        return (
            f"released columns are not the protocol's ({len(expected_columns)} expected: "
            f"{', '.join(expected_columns[:3])}, ...)"
        )
    if values.ndim != 2 or values.shape[0] != len(ids) or values.dtype != np.float64:
        return f"values of shape {values.shape} ({values.dtype}) do not match {len(ids)} cases"
    if columns is not None and meta.get("columns") != columns:
        return "released columns differ from the other sites' (different protocol settings?)"
    if values.shape[1] != len(meta.get("columns") or []):
        return "number of values does not match the number of columns"
    if not np.isfinite(values).all():
        return "non-finite values"
    if any(s not in ("train", "val", "test") for s in splits):
        return "unknown split label"
    release = meta.get("release") or {}
    if release.get("mode") != loaded.protocol.release.mode:
        return f"release mode {release.get('mode')!r} is not the protocol's"
    return None


def collect_features(
    inbox: Path,
    loaded: LoadedProtocol,
    server_keys: PrivateKeys,
    out: Path,
    state_dir: Path,
    *,
    site_public_keys: tuple[PublicKeys, ...] = (),
) -> CollectedFeatures:
    """Open every ``*.env`` in ``inbox`` and write ``out/features.csv`` + ``manifest.json``."""
    if server_keys.role != "server":
        raise KeyError_(f"{server_keys.party_id}: a {server_keys.role} key cannot collect")
    protocol = loaded.protocol
    senders = allowed_senders(protocol, "site", public_keys=site_public_keys)
    guard = ReplayGuard(state_dir / "replay")
    if not Path(inbox).is_dir():
        raise DataError(f"{inbox}: no such inbox folder")
    files = sorted(p for p in Path(inbox).glob("*.env") if p.is_file())
    if not files:  # nothing was refused: a user error (exit 2), not a security one
        raise DataError(
            f"{inbox}: no *.env envelope to collect (the sites' `securefed features release "
            "--out` writes them)"
        )
    problems: list[tuple[str, SecurefedError]] = []
    accepted: list[OpenedMessage] = []
    columns: list[str] | None = None
    expected = released_columns(loaded)
    seen_ids: dict[str, str] = {}
    seen_senders: set[str] = set()
    ledger_heads = LedgerHeads(state_dir)
    known = ledger_heads.load()
    new_heads: dict[str, SiteHead] = {}
    for path in files:
        try:
            msg = open_message(
                read_message(path),
                recipient=server_keys,
                senders=senders,
                protocol_hash=loaded.sha256,
                stage=FEATURES_STAGE,
                guard=guard,
                advance=False,
            )
        except SecurefedError as exc:
            problems.append((path.name, exc))
            continue
        problem = _content_problem(msg, loaded, columns, expected)
        if problem is None and msg.sender in seen_senders:
            problem = f"a second feature release from {msg.sender} in the same inbox"
        if problem is None:
            dup = next((s for s in msg.meta["subject_ids"] if s in seen_ids), None)
            if dup is not None:
                problem = f"case {dup} was already sent by {seen_ids[dup]}"
        if problem is not None:
            problems.append((path.name, EnvelopeError(f"{msg.sender}: {problem}")))
            continue
        if loaded.protocol.release.mode == "local-dp":  # a release charged to the site ledger
            try:
                new_heads[msg.sender] = ledger_heads.check(
                    msg.sender, msg.meta.get("ledger"), msg.meta["release"].get("release_id"),
                    loaded, known,
                )  # fmt: skip
            except SecurefedError as exc:
                problems.append((path.name, exc))
                continue
        columns = list(msg.meta["columns"])
        seen_senders.add(msg.sender)
        seen_ids.update({s: msg.sender for s in msg.meta["subject_ids"]})
        accepted.append(msg)
    if problems:
        raise CollectionRefused(problems)
    assert columns is not None
    collected = _assemble(accepted, columns)
    _write(out, collected, loaded)
    for msg in accepted:  # only now: a crash before this point leaves everything retryable
        guard.advance(msg.sender, FEATURES_STAGE, msg.counter)
    if new_heads:
        ledger_heads.save({**known, **new_heads})
    _audit_collection(state_dir, server_keys, loaded, accepted)
    return collected


def _audit_collection(
    state_dir: Path, server_keys: PrivateKeys, loaded: LoadedProtocol, accepted: list[Any]
) -> None:
    """The server's audit log: each opened envelope and the site heads they carried."""
    audit = AuditLog(state_dir, server_keys.party_id, loaded.sha256)
    for msg in accepted:
        audit.record("envelope-opened", sender=msg.sender, stage=FEATURES_STAGE,
                     counter=msg.counter, rows=len(msg.meta["subject_ids"]))  # fmt: skip
        head = msg.meta.get("audit_head")
        if isinstance(head, dict):  # the site's signed audit head, kept as the site sent it
            audit.record("site-head", site=msg.sender, seq=head.get("seq"),
                         head=head.get("head"), signature=head.get("signature"))  # fmt: skip
    audit.sign_head(server_keys)


def _assemble(messages: list[OpenedMessage], columns: list[str]) -> CollectedFeatures:
    ids: list[str] = []
    parts: list[int] = []
    splits: list[str] = []
    blocks: list[np.ndarray] = []
    senders: dict[str, dict[str, Any]] = {}
    for msg in sorted(messages, key=lambda m: m.sender):
        meta = msg.meta
        ids += list(meta["subject_ids"])
        parts += [int(meta["partition_id"])] * len(meta["subject_ids"])
        splits += list(meta["splits"])
        blocks.append(msg.arrays["values"])
        senders[msg.sender] = {
            "partition_id": int(meta["partition_id"]),
            "cases": len(meta["subject_ids"]),
            "counter": msg.counter,
            **{k: meta["release"].get(k) for k in ("mode", "mechanism", "epsilon", "delta")},
        }
    return CollectedFeatures(ids, parts, splits, columns, np.vstack(blocks), senders)


def _write(out: Path, table: CollectedFeatures, loaded: LoadedProtocol) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_ID_COLUMNS, *table.columns])
    for i, sid in enumerate(table.subject_ids):
        writer.writerow(
            [
                sid,
                table.partition_ids[i],
                table.splits[i],
                *(repr(float(v)) for v in table.values[i]),
            ]
        )
    data = buf.getvalue().encode("utf-8")
    manifest = {
        "format": "securefed-collected-features/1",
        "features_sha256": "sha256:" + hashlib.sha256(data).hexdigest(),
        "protocol_sha256": loaded.sha256,
        "release_mode": loaded.protocol.release.mode,
        "columns": table.columns,
        "cases": len(table.subject_ids),
        "senders": table.senders,
    }
    write_atomic(out / FEATURES_FILE, data, 0o644)
    write_atomic(
        out / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"), 0o644
    )


def load_collected(folder: Path) -> CollectedFeatures:
    """Read a collected table back (server side)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        data = (folder / FEATURES_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: not a collected feature folder ({exc})") from exc
    if manifest.get("features_sha256") != "sha256:" + hashlib.sha256(data).hexdigest():
        raise DataError(
            f"{folder / FEATURES_FILE}: does not match {MANIFEST_FILE} (changed or half-written); "
            "collect again"
        )
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    header, body = rows[0], rows[1:]
    columns = header[len(_ID_COLUMNS) :]
    values = np.array([[float(v) for v in r[len(_ID_COLUMNS) :]] for r in body], dtype=np.float64)
    table = CollectedFeatures(
        [r[0] for r in body],
        [int(r[1]) for r in body],
        [r[2] for r in body],
        columns,
        values.reshape(len(body), len(columns)),
        manifest.get("senders", {}),
    )
    if not all(math.isfinite(v) for v in values.ravel()):
        raise EnvelopeError(f"{folder}: collected table has non-finite values")
    return table
