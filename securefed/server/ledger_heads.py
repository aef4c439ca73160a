"""The server holds each site to its ledger: every feature release carries the site's ledger
(the sealed, signed copy of its entries up to this release's intent); the server verifies the
chain, checks that it binds this site, protocol and budget, that the release is charged in it
and the composed spend is within budget, and that it extends the head the server saw last from
that site. A truncated, deleted or replaced ledger (a refunded budget) is refused.

The last head per site is kept in ``STATE/ledger-heads.json`` and is what
``securefed ledger verify DIR --server-head SEQ:HASH`` checks a site's file against. The entries
hold stages, random release ids and DP events: nothing derived from patient data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed.errors import LedgerError, LedgerRollbackError
from securefed.fileio import atomic_write_bytes, read_json
from securefed.privacy.ledger import budget_for, verify_entries
from securefed.protocol import LoadedProtocol

__all__ = ["HEADS_FILE", "LedgerHeads", "LedgerRollbackError", "SiteHead"]

HEADS_FILE = "ledger-heads.json"


@dataclass(frozen=True)
class SiteHead:
    """How far the server has seen a site's ledger: entry count and the hash of the last entry."""

    seq: int
    head: str

    def text(self) -> str:
        return f"{self.seq}:{self.head}"


class LedgerHeads:
    """The server's record of every site's last ledger head (one JSON file in its state)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / HEADS_FILE

    def load(self) -> dict[str, SiteHead]:
        if not self.path.is_file():
            return {}
        doc = read_json(self.path)
        return {site: SiteHead(int(v["seq"]), str(v["head"])) for site, v in doc.items()}

    def save(self, heads: dict[str, SiteHead]) -> None:
        doc = {site: {"seq": h.seq, "head": h.head} for site, h in sorted(heads.items())}
        atomic_write_bytes(self.path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o644)

    def check(
        self,
        site_id: str,
        entries: Any,
        release_id: Any,
        loaded: LoadedProtocol,
        known: dict[str, SiteHead],
    ) -> SiteHead:
        """Verify the ledger a release from ``site_id`` carries; returns its new head."""
        if not isinstance(entries, list) or not entries:
            raise LedgerRollbackError(f"{site_id}: the release carries no ledger")
        try:
            state = verify_entries(entries, f"{site_id}'s ledger (as sent)")
        except LedgerError as exc:
            raise LedgerRollbackError(f"{site_id}: {exc}") from exc
        if (state.site, state.protocol, state.budget) != (
            site_id, loaded.sha256, budget_for(loaded),
        ):  # fmt: skip
            raise LedgerRollbackError(
                f"{site_id}: the ledger sent is bound to site {state.site!r}, protocol "
                f"{state.protocol}, or another budget, not to this site and protocol"
            )
        if release_id is not None and release_id not in state.charges:
            raise LedgerRollbackError(
                f"{site_id}: release {release_id!r} is not charged in the ledger it came with"
            )
        total = loaded.protocol.privacy.total_epsilon
        if not math.isinf(total) and state.spent() > total + 1e-9:
            raise LedgerRollbackError(
                f"{site_id}: its ledger spends epsilon {state.spent():.4g}, above the "
                f"protocol's {total:g}"
            )
        last = known.get(site_id)
        if last is not None and (
            len(entries) < last.seq or entries[last.seq - 1].get("hash") != last.head
        ):
            raise LedgerRollbackError(
                f"{site_id}: its ledger does not extend the head the server saw last "
                f"({last.text()}): it was truncated, deleted or replaced (a refunded budget); "
                "refusing the release"
            )
        return SiteHead(len(entries), state.head)
