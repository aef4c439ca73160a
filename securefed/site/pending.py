"""A site's releases that were sealed but whose ledger commit is not recorded yet.

A release is kept here (fsync'd) after its noise is drawn and it is sealed, and before anything
is written for sending; it is removed once the ledger records the commit. A run interrupted in
between resends exactly the kept bytes and records the commit; it never draws fresh noise under
the same charge (two independently noised copies of one release would double its epsilon).
Layout: ``STATE/pending/<stage>.json`` (release id, protocol, summary) and
``STATE/pending/<release id>.env`` (the sealed envelope). Nothing here leaves the site."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed.errors import InternalError
from securefed.fileio import atomic_write_bytes, read_json
from securefed.privacy.ledger import Ledger

__all__ = ["PendingRelease", "PendingReleases"]


@dataclass(frozen=True)
class PendingRelease:
    """A sealed release awaiting its commit."""

    release_id: str
    envelope: bytes
    summary: dict[str, Any]


class PendingReleases:
    """The pending folder of one site's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir) / "pending"

    def _record(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def _envelope(self, release_id: str) -> Path:
        return self.folder / f"{release_id}.env"

    def begin(self, stage: str, protocol_hash: str, release_id: str) -> None:
        """Note the release id before its ledger intent is written."""
        doc = {"stage": stage, "protocol": protocol_hash, "release_id": release_id}
        atomic_write_bytes(self._record(stage), json.dumps(doc).encode())

    def keep(self, stage: str, release_id: str, envelope: bytes, summary: dict[str, Any]) -> None:
        """Keep the sealed release (durably) before it is written for sending."""
        atomic_write_bytes(self._envelope(release_id), envelope)
        record = read_json(self._record(stage))
        if record.get("release_id") != release_id:
            raise InternalError(
                f"{self._record(stage)}: the pending {stage} release is "
                f"{record.get('release_id')!r}, not {release_id!r}"
            )
        record["summary"] = summary
        atomic_write_bytes(self._record(stage), json.dumps(record).encode())

    def waiting(self, stage: str, protocol_hash: str, ledger: Ledger) -> PendingRelease | None:
        """The release of ``stage`` that was sealed but not committed, if any. A record left
        before the release was sealed, already committed, or of another protocol is cleared (its
        intent, if any, stays charged: nothing of it was sent)."""
        path = self._record(stage)
        if not path.is_file():
            return None
        record = read_json(path)
        rid = str(record.get("release_id"))
        state = ledger.read()
        envelope = self._envelope(rid)
        usable = (
            record.get("protocol") == protocol_hash
            and rid in state.charges
            and rid not in state.committed
            and envelope.is_file()
            and "summary" in record
        )
        if not usable:
            self.clear(stage)
            return None
        return PendingRelease(rid, envelope.read_bytes(), dict(record["summary"]))

    def clear(self, stage: str) -> None:
        """Forget the pending release of ``stage`` (after its commit)."""
        path = self._record(stage)
        if path.is_file():
            rid = str(read_json(path).get("release_id"))
            self._envelope(rid).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
