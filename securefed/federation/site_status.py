"""``securefed site status``: what a site's operator needs to see at a glance, from the site's own
files only: whether its trust and policy accept the protocol (and who signed it), the ledger's
spend and head, the last round it trained in per phase, the audit log's last entry and the
SuperNode's last connection state.

Nothing leaves the site (it reads local files). Tests: ``tests/cli/test_site_status.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from securefed.errors import SecurefedError
from securefed.federation.site_runtime import ROUNDS_FILE
from securefed.fileio import read_json
from securefed.privacy.ledger import LEDGER_FILE, read_ledger
from securefed.trust import load_site_config, verify_for_site
from securefed.trust.audit_log import AUDIT_FILE, read_entries

__all__ = ["ANSI", "CONNECTION_STATE", "SiteStatus", "connection_line", "site_status"]

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""Colour codes in Flower's log lines."""
CONNECTION_STATE = re.compile(
    r"connect|retry|refus|registered|activat|error|unavailable|superlink|SuperNode ID",
    re.IGNORECASE,
)
"""A SuperNode log line about its connection state."""
_NODE_ID = re.compile(r"SuperNode ID:\s*(\d+)")


def connection_line(line: str) -> str:
    """A SuperNode log line about its connection, without colour codes; Flower 1.42
    says nothing more than its node id once the SuperLink activated it: that reads "connected"."""
    text = ANSI.sub("", line).strip()
    found = _NODE_ID.search(text)
    return f"connected to the SuperLink as node {found.group(1)}" if found else text


@dataclass
class SiteStatus:
    """One site's status (see the module docstring)."""

    site_id: str
    protocol_hash: str
    accepted: bool
    why: str  # the signers, or why the site refuses the protocol
    state_dir: Path | None
    ledger: str  # spend and head, or "no ledger"
    rounds: dict[str, int] = field(default_factory=dict)
    last_entry: str = ""
    connection: str = ""

    def lines(self) -> list[str]:
        out = [f"site {self.site_id}: protocol {self.protocol_hash}",
               f"accepted: {'yes, ' if self.accepted else 'NO: '}{self.why}",
               f"state folder: {self.state_dir or '(none: set site.ledger_dir or --work-dir)'}",
               f"ledger: {self.ledger}"]  # fmt: skip
        if self.rounds:
            last = ", ".join(f"{k} round {v}" for k, v in sorted(self.rounds.items()))
            out.append(f"last round trained: {last}")
        else:
            out.append("last round trained: none")
        out.append(f"audit log: {self.last_entry or 'no entry'}")
        out.append(f"connection: {self.connection or 'no SuperNode log (not started here)'}")
        return out


def site_status(protocol: Path, site_config: Path, work_dir: Path | None = None) -> SiteStatus:
    """The status of the site of ``site_config`` under ``protocol`` (``work_dir``: its
    SuperNode's working folder, for the connection state and when SITE.toml sets no ledger
    folder)."""
    config = load_site_config(site_config)
    try:
        accepted = verify_for_site(protocol, config)
        sha, ok = accepted.sha256, True
        why = ("signed by " + ", ".join(accepted.signers)) if accepted.signers else "unsigned"
    except SecurefedError as exc:
        from securefed.protocol import load_protocol

        sha, ok, why = load_protocol(protocol).sha256, False, str(exc).splitlines()[0]
    state = Path(config.site.ledger_dir) if config.site.ledger_dir else work_dir
    status = SiteStatus(config.site.id, sha, ok, why, state, "no ledger (no DP charge here)")
    if state is not None:
        _read_state(status, state, sha)
    if work_dir is not None:
        status.connection = _connection(Path(work_dir) / "supernode.log")
    return status


def _read_state(status: SiteStatus, state: Path, sha: str) -> None:
    if (state / LEDGER_FILE).is_file():
        led = read_ledger(state / LEDGER_FILE)
        spent = led.spent()
        total = led.budget.total_epsilon if led.budget is not None else float("inf")
        status.ledger = (f"{len(led.entries)} entries, spent epsilon {spent:.4g} of {total:g}, "
                         f"head {led.head[:23]}...")  # fmt: skip
    if (state / ROUNDS_FILE).is_file():
        rounds = read_json(state / ROUNDS_FILE)
        status.rounds = {k.split("/", 1)[1]: int(v) for k, v in rounds.items()
                         if k.startswith(sha + "/")}  # fmt: skip
    if (state / AUDIT_FILE).is_file():
        entries = read_entries(state / AUDIT_FILE)
        if entries:
            last = entries[-1]
            status.last_entry = (
                f"{last.get('event')} ({last.get('time', '')}), {len(entries)} entries"
            )


def _connection(log: Path) -> str:
    if not log.is_file():
        return ""
    lines = log.read_bytes()[-65536:].decode("utf-8", "replace").splitlines()
    states = [connection_line(s) for s in lines if CONNECTION_STATE.search(s)]
    return states[-1] if states else "started; no connection message yet"
