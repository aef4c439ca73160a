"""The site's privacy ledger: an append-only, hash-chained, fsync'd JSONL file.

One ledger per site and study covers every release (feature release, clustering aggregates,
training steps). It never leaves the site. Each line is one JSON entry:

- ``open`` (first line): binds the file to the site, the protocol hash and the protocol's budget
  (total epsilon/delta, accountant, neighbouring relation);
- ``intent``: written (and fsync'd) after the budget check and BEFORE any noise is drawn; it
  holds the stage, the release id, the DpEvent as JSON and, when verified, its exact
  (epsilon, delta);
- ``commit``: written after the released values have been written locally, before they are sent;
- ``amend``: the ledger continues under an amended protocol (``supersedes`` names the protocol
  the ledger was bound to, ``budget`` the new one): every earlier charge still counts against
  the new budget, which is how an amendment can never reset a site's spend.

Every entry carries ``seq``, ``prev`` (hash of the previous entry), ``protocol``, ``site``,
``time`` (the UTC date only: an intent and a commit timed to the second would bracket how long
the site's work took, a function of its data, in a file the site hands to an auditor) and
``hash`` = sha256 of its canonical JSON without ``hash``.

Crash rules (kill -9 at any point):
- an intent counts as spent whether or not it was committed (noise may have been drawn);
- retrying an uncommitted release id with the same event reuses the intent: charged once;
- a committed release id is refused (send the release already written, or use a new id);
- a torn last line (the process died inside the write, before its fsync returned, so before any
  noise) is not an entry; it is reported by ``verify`` and cut off before the next append.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dp_accounting

from securefed.errors import (
    BudgetExceededError,
    LedgerCorruptError,
    LedgerError,
    LedgerRollbackError,
)
from securefed.fileio import canonical_json, entry_hash, locked_append
from securefed.privacy.accounting import (
    Charge,
    composed_epsilon,
    event_from_json,
    event_to_json,
    verify_claim,
)
from securefed.protocol import LoadedProtocol, Protocol
from securefed.trust.audit_log import AuditLog

__all__ = [
    "GENESIS",
    "LEDGER_FILE",
    "LEDGER_VERSION",
    "BudgetSpec",
    "ChargeHandle",
    "Ledger",
    "LedgerState",
    "budget_for",
    "read_ledger",
    "stage_allocations",
    "verify_entries",
]

LEDGER_FILE = "ledger.jsonl"
LEDGER_VERSION = 1
GENESIS = "sha256:" + "0" * 64
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class BudgetSpec:
    """The per-site budget the ledger enforces (from the protocol's ``privacy`` table)."""

    total_epsilon: float
    total_delta: float
    accountant: str = "rdp"
    neighbouring: str = "replace-one"
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        eps = "inf" if math.isinf(self.total_epsilon) else self.total_epsilon
        return {
            "total_epsilon": eps,
            "total_delta": self.total_delta,
            "accountant": self.accountant,
            "neighbouring": self.neighbouring,
            "stages": {k: list(v) for k, v in sorted(self.stages.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BudgetSpec:
        eps = data["total_epsilon"]
        return cls(
            total_epsilon=math.inf if eps == "inf" else float(eps),
            total_delta=float(data["total_delta"]),
            accountant=str(data["accountant"]),
            neighbouring=str(data["neighbouring"]),
            stages={k: (float(v[0]), float(v[1])) for k, v in data.get("stages", {}).items()},
        )


def stage_allocations(protocol: Protocol) -> dict[str, tuple[float, float]]:
    """(epsilon, delta) per stage as the protocol allocates them: ``features`` (local-dp
    release), ``clustering`` (secure-aggregate), ``training`` (DP-SGD or client-level DP) and
    ``evaluation`` (the deployment's DP test summary)."""
    out: dict[str, tuple[float, float]] = {}
    rel = protocol.release
    if rel.mode == "local-dp" and rel.epsilon is not None:
        out["features"] = (float(rel.epsilon), float(rel.delta))
    if rel.mode == "secure-aggregate":
        sec = protocol.clustering.secure
        out["clustering"] = (float(sec.epsilon), float(sec.delta))
    if (training := protocol.training.dp_training_budget) is not None:
        out["training"] = training
    if (summary := protocol.evaluation.dp_summary).epsilon is not None:
        out["evaluation"] = (float(summary.epsilon), float(summary.delta))
    return out


def budget_for(loaded: LoadedProtocol) -> BudgetSpec:
    """The per-site budget a protocol (``LoadedProtocol``) sets for every site's ledger."""
    p = loaded.protocol.privacy
    return BudgetSpec(
        total_epsilon=float(p.total_epsilon),
        total_delta=float(p.total_delta),
        accountant=p.accountant,
        neighbouring=p.neighbouring,
        stages=stage_allocations(loaded.protocol),
    )


@dataclass
class LedgerState:
    """What a verified read of the ledger yields."""

    entries: list[dict[str, Any]]
    charges: dict[str, Charge]
    committed: set[str]
    head: str
    torn_tail: bool
    budget: BudgetSpec | None
    protocol: str | None
    site: str | None

    def spent(self, delta: float | None = None, kind: str | None = None) -> float:
        if self.budget is None:
            return 0.0
        return composed_epsilon(
            list(self.charges.values()),
            self.budget.total_delta if delta is None else delta,
            self.budget.accountant if kind is None else kind,
        )

    def spent_per_stage(self) -> dict[str, float]:
        """Epsilon at the protocol's delta of each stage's charges alone (features, clustering,
        training). Their sum bounds the total epsilon only at (number of stages x delta), basic
        composition of (epsilon_i, delta) guarantees; :meth:`spent` composes every charge
        jointly at delta itself, the ledger's figure."""
        if self.budget is None:
            return {}
        stages: dict[str, list[Charge]] = {}
        for charge in self.charges.values():
            stages.setdefault(charge.stage, []).append(charge)
        delta, kind = self.budget.total_delta, self.budget.accountant
        return {st: composed_epsilon(cs, delta, kind) for st, cs in sorted(stages.items())}

    def epsilon_curve(self) -> list[dict[str, Any]]:
        """After each charge, in ledger order: ``{"step", "stage", "release_id", "epsilon"}``,
        the total spent so far at the protocol's delta (one row per release or DP-SGD round)."""
        if self.budget is None:
            return []
        delta, kind = self.budget.total_delta, self.budget.accountant
        charges = list(self.charges.values())
        return [
            {"step": i + 1, "stage": c.stage, "release_id": c.release_id,
             "epsilon": composed_epsilon(charges[: i + 1], delta, kind)}
            for i, c in enumerate(charges)
        ]  # fmt: skip


@dataclass
class ChargeHandle:
    """Given to the body of ``Ledger.charge``: the charge, and the spend including it."""

    release_id: str
    stage: str
    event: dp_accounting.DpEvent
    spent_epsilon: float
    reused: bool


def _entry_hash(entry: dict[str, Any]) -> str:
    return entry_hash(entry)


class Ledger:
    """The site ledger in ``folder`` (file ``ledger.jsonl``), bound to one site and protocol."""

    def __init__(
        self,
        folder: str | Path,
        *,
        site_id: str,
        protocol_hash: str,
        budget: BudgetSpec,
        supersedes: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LEDGER_FILE
        self.site_id = site_id
        self.protocol_hash = protocol_hash
        self.budget = budget
        self.supersedes = supersedes

    @classmethod
    def for_protocol(cls, folder: str | Path, loaded: LoadedProtocol, site_id: str) -> Ledger:
        """The ledger for ``site_id`` under a loaded protocol (``LoadedProtocol``); a ledger of
        the protocol it supersedes (``governance.supersedes``) continues under it."""
        budget = budget_for(loaded)
        return cls(folder, site_id=site_id, protocol_hash=loaded.sha256, budget=budget,
                   supersedes=loaded.protocol.governance.supersedes)  # fmt: skip

    # -- reading --------------------------------------------------------------------------------
    def read(self) -> LedgerState:
        """Read and verify the whole file (raises LedgerCorruptError naming the bad line)."""
        return read_ledger(self.path)

    def verify(self) -> LedgerState:
        """Verify the chain and that the ledger belongs to this site and protocol."""
        state = self.read()
        self._check_binding(state)
        return state

    def spent(self) -> float:
        """Composed epsilon of every recorded release at the site's total delta."""
        return self.verify().spent()

    def head(self) -> str:
        """Hash of the last entry (to quote in a signed message, anchoring the ledger)."""
        return self.read().head

    def _amends(self, state: LedgerState) -> bool:
        """The ledger is bound to the protocol this one supersedes (an amend entry is due)."""
        return (
            state.protocol is not None
            and self.supersedes is not None
            and state.protocol == self.supersedes
            and state.site == self.site_id
        )

    def _check_binding(self, state: LedgerState) -> None:
        if state.protocol is None or self._amends(state):
            return
        if state.protocol != self.protocol_hash or state.site != self.site_id:
            raise LedgerError(
                f"{self.path}: this ledger belongs to site {state.site!r} under protocol "
                f"{state.protocol}, not site {self.site_id!r} under {self.protocol_hash}; "
                "use one ledger folder per site and study"
            )
        if state.budget != self.budget:
            raise LedgerError(
                f"{self.path}: the protocol's budget differs from the one the "
                "ledger was opened with"
            )

    # -- charging -------------------------------------------------------------------------------
    @contextmanager
    def charge(
        self,
        stage: str,
        release_id: str,
        event: dp_accounting.DpEvent,
        epsilon_delta: tuple[float, float] | None = None,
    ) -> Iterator[ChargeHandle]:
        """Check the budget, record the intent (fsync), run the body (draw noise, write the
        release), then record the commit. Raises BudgetExceededError before the body runs if
        the site's composed spend (or the stage's) would exceed the protocol's budget.
        If the body raises, no commit is written and the intent stays charged."""
        if epsilon_delta is not None:
            epsilon_delta = (float(epsilon_delta[0]), float(epsilon_delta[1]))
            verify_claim(event, *epsilon_delta)
        event_json = event_to_json(event)
        with self._locked() as fh:
            state = self._state_for_append(fh)
            previous = state.charges.get(release_id)
            if release_id in state.committed:
                raise LedgerError(
                    f"{self.path}: release {release_id!r} is already committed; send the "
                    "release already written, or use a new release id (charged again)"
                )
            if previous is not None:
                if (previous.stage, event_to_json(previous.event), previous.claimed) != (
                    stage,
                    event_json,
                    epsilon_delta,
                ):
                    raise LedgerError(
                        f"{self.path}: release {release_id!r} was started with a different "
                        "stage or event; retry it with the same settings or use a new id"
                    )
                spent = state.spent()
                reused = True
            else:
                self._check_anchor(state)
                new = Charge(stage, release_id, event, epsilon_delta)
                try:
                    spent = self._check_budget(state, new)
                except BudgetExceededError:
                    self._audit().record("budget-refused", stage=stage, release_id=release_id)
                    raise
                self._append(
                    fh,
                    state,
                    {
                        "kind": "intent",
                        "stage": stage,
                        "release_id": release_id,
                        "event": event_json,
                        "claimed": list(epsilon_delta) if epsilon_delta else None,
                    },
                )
                self._audit().record(
                    "budget-spend", stage=stage, release_id=release_id, epsilon_spent=spent
                )
                reused = False
        handle = ChargeHandle(release_id, stage, event, spent, reused)
        yield handle
        with self._locked() as fh:
            state = self._state_for_append(fh)
            if release_id not in state.committed:
                self._append(
                    fh, state, {"kind": "commit", "stage": stage, "release_id": release_id}
                )

    def affordable(self, stage: str, release_id: str, event: dp_accounting.DpEvent) -> bool:
        """Whether ``charge(stage, release_id, event)`` would pass the budget now (an intent of
        that id already written counts as charged). Records nothing."""
        state = self.verify()
        if release_id in state.charges and release_id not in state.committed:
            return True
        try:
            self._check_budget(state, Charge(stage, release_id, event, None))
        except BudgetExceededError:
            return False
        return True

    def _check_anchor(self, state: LedgerState) -> None:
        """Refuse to charge unless the ledger extends every spend the site's audit log recorded
        (``budget-spend``, written beside it at each charge): a ledger deleted, truncated or
        replaced by an older copy would refund spent budget. Raises LedgerRollbackError."""
        from securefed.trust.audit_log import AUDIT_FILE, read_entries

        entries = read_entries(self.folder / AUDIT_FILE)
        mine = [e for e in entries if e.get("party") == self.site_id]
        recorded = [e.get("details", {}) for e in mine if e.get("event") == "budget-spend"]
        if not recorded:
            return
        missing = [str(d.get("release_id")) for d in recorded if d.get("release_id") not in
                   state.charges]  # fmt: skip
        last = max(float(d.get("epsilon_spent", 0.0)) for d in recorded)
        b = self.budget
        charges = list(state.charges.values())
        spent = composed_epsilon(charges, b.total_delta, b.accountant) if charges else 0.0
        if missing or spent < last * (1 - 1e-9):
            what = f"charges {missing[:3]} are missing" if missing else f"spends {spent:g}"
            raise LedgerRollbackError(
                f"{self.path}: the ledger does not extend what the site's audit log recorded "
                f"({what}; the log recorded a spend of {last:g}): it was deleted, truncated or "
                "replaced, which would refund spent budget; restore it from a backup. Refused "
                "before any noise is drawn"
            )

    def _audit(self) -> AuditLog:
        """The site's audit log beside the ledger (securefed.trust.audit_log)."""
        return AuditLog(self.folder, self.site_id, self.protocol_hash)

    def commit_intent(self, release_id: str) -> None:
        """Record the commit of a release whose intent was written by an earlier, interrupted
        run (its output was kept at the site and has now been sent). Refuses an id without an
        intent; a second commit is a no-op."""
        with self._locked() as fh:
            state = self._state_for_append(fh)
            charge = state.charges.get(release_id)
            if charge is None:
                raise LedgerError(f"{self.path}: no intent for release {release_id!r} to commit")
            if release_id not in state.committed:
                self._append(
                    fh, state, {"kind": "commit", "stage": charge.stage, "release_id": release_id}
                )

    def _check_budget(self, state: LedgerState, new: Charge) -> float:
        charges = [*state.charges.values(), new]
        b = self.budget
        spent = composed_epsilon(charges, b.total_delta, b.accountant)
        if spent > b.total_epsilon + _TOLERANCE:
            before = state.spent()
            raise BudgetExceededError(
                f"{self.path}: release {new.release_id!r} ({new.stage}) refused before any noise "
                f"was drawn: site {self.site_id} has spent epsilon {before:.4g} of "
                f"{b.total_epsilon:g}; with this release it would be {spent:.4g} "
                f"(delta {b.total_delta:g}, {b.accountant} accountant)"
            )
        if new.stage in b.stages:
            s_eps, s_delta = b.stages[new.stage]
            stage_charges = [c for c in charges if c.stage == new.stage]
            s_spent = composed_epsilon(stage_charges, s_delta, b.accountant)
            if s_spent > s_eps + _TOLERANCE:
                raise BudgetExceededError(
                    f"{self.path}: release {new.release_id!r} refused before any noise was "
                    f"drawn: stage {new.stage!r} would spend epsilon {s_spent:.4g}, above its "
                    f"allocation {s_eps:g} (delta {s_delta:g})"
                )
        return spent

    # -- writing --------------------------------------------------------------------------------
    def _locked(self) -> Any:
        return locked_append(self.path)

    def _state_for_append(self, fh: Any) -> LedgerState:
        state = read_ledger(self.path)
        if state.torn_tail:
            good = sum(len(line) for line in _raw_lines(self.path)[0])
            os.ftruncate(fh.fileno(), good)
            os.fsync(fh.fileno())
        self._check_binding(state)
        if not state.entries:
            self._append(fh, state, {"kind": "open", "budget": self.budget.to_json()})
            state = read_ledger(self.path)
        elif self._amends(state):
            body = {"kind": "amend", "supersedes": state.protocol,
                    "budget": self.budget.to_json()}  # fmt: skip
            self._append(fh, state, body)
            state = read_ledger(self.path)
        return state

    def _append(self, fh: Any, state: LedgerState, body: dict[str, Any]) -> None:
        entry = {
            "v": LEDGER_VERSION,
            "seq": len(state.entries),
            "prev": state.head,
            "protocol": self.protocol_hash,
            "site": self.site_id,
            "time": datetime.now(UTC).date().isoformat(),  # the date only (module docstring)
            **body,
        }
        entry["hash"] = _entry_hash(entry)
        fh.seek(0, os.SEEK_END)
        fh.write(canonical_json(entry) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
        state.entries.append(entry)
        state.head = entry["hash"]


def _raw_lines(path: Path) -> tuple[list[bytes], bytes]:
    """Complete lines (with their newline) and a torn tail (bytes after the last newline)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], b""
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read the ledger ({exc.strerror})") from exc
    lines = data.splitlines(keepends=True)
    tail = b""
    if lines and not lines[-1].endswith(b"\n"):
        tail = lines.pop()
    return lines, tail


_REQUIRED = {
    "open": {"budget"},
    "intent": {"stage", "release_id", "event", "claimed"},
    "commit": {"stage", "release_id"},
    "amend": {"supersedes", "budget"},
}
_COMMON = {"v", "seq", "prev", "protocol", "site", "time", "hash", "kind"}


def read_ledger(path: str | Path) -> LedgerState:
    """Read and verify a ledger file; LedgerCorruptError names the first bad line."""
    path = Path(path)
    lines, tail = _raw_lines(path)
    entries: list[Any] = []
    for number, raw in enumerate(lines, start=1):
        try:
            entries.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerCorruptError(
                f"{path} line {number}: not valid JSON ({exc}); the ledger was edited or damaged"
            ) from exc
    state = verify_entries(entries, str(path))
    state.torn_tail = bool(tail)
    return state


def verify_entries(entries: list[Any], source: str) -> LedgerState:
    """Verify a ledger given as its parsed entries (the file's lines, or the copy a release
    carries to the server); LedgerCorruptError names ``source`` and the first bad entry."""
    state = LedgerState([], {}, set(), GENESIS, False, None, None, None)
    for number, entry in enumerate(entries, start=1):
        _check_entry(entry, f"{source} line {number}", number - 1, state)
        state.entries.append(entry)
        state.head = entry["hash"]
    return state


def _check_entry(entry: Any, where: str, seq: int, state: LedgerState) -> None:
    """Verify one ledger line against the chain so far and apply it to ``state``."""

    def bad(msg: str) -> LedgerCorruptError:
        return LedgerCorruptError(f"{where}: {msg}; the ledger was edited or damaged")

    _check_frame(entry, seq, state, bad)
    kind = entry["kind"]
    if seq == 0:
        if kind != "open":
            raise bad("the first entry must be the 'open' entry")
        try:
            state.budget = BudgetSpec.from_json(entry["budget"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"malformed budget ({exc!r})") from exc
        state.protocol, state.site = entry["protocol"], entry["site"]
        return
    if kind == "open":
        raise bad("a second 'open' entry")
    if kind == "amend":
        if entry["site"] != state.site or entry["supersedes"] != state.protocol:
            raise bad("an amendment of another protocol or site")
        try:
            state.budget = BudgetSpec.from_json(entry["budget"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"malformed budget ({exc!r})") from exc
        state.protocol = entry["protocol"]
        return
    if (entry["protocol"], entry["site"]) != (state.protocol, state.site):
        raise bad("entry for another protocol or site")
    if kind == "intent":
        _apply_intent(entry, state, bad)
        return
    rid = entry["release_id"]
    if rid not in state.charges or rid in state.committed:
        raise bad(f"commit for release {rid!r} without an open intent")
    state.committed.add(rid)


def _check_frame(
    entry: Any, seq: int, state: LedgerState, bad: Callable[[str], LedgerCorruptError]
) -> None:
    """Shape, version, own hash, chain link and sequence number of an entry."""
    if not isinstance(entry, dict):
        raise bad("not a JSON object")
    kind = entry.get("kind")
    if kind not in _REQUIRED:
        raise bad(f"unknown entry kind {kind!r}")
    keys = set(entry)
    if keys != _COMMON | _REQUIRED[kind]:
        raise bad(f"fields {sorted(keys ^ (_COMMON | _REQUIRED[kind]))} missing or unexpected")
    if entry["v"] != LEDGER_VERSION:
        raise bad(f"unsupported ledger version {entry['v']!r}")
    if entry["hash"] != _entry_hash(entry):
        raise bad("hash does not match the entry's content")
    if entry["prev"] != state.head:
        raise bad("hash chain broken (prev does not match the previous entry)")
    if entry["seq"] != seq:
        raise bad(f"sequence number {entry['seq']!r}, expected {seq}")


def _apply_intent(
    entry: dict[str, Any], state: LedgerState, bad: Callable[[str], LedgerCorruptError]
) -> None:
    """An intent: a new release id, a readable DP event and a claim that the event supports."""
    rid = entry["release_id"]
    if rid in state.charges:
        raise bad(f"second intent for release {rid!r}")
    try:
        event = event_from_json(entry["event"])
    except (LedgerError, TypeError, ValueError) as exc:
        raise bad(f"unreadable DP event ({exc})") from exc
    claimed = entry["claimed"]
    if claimed is not None:
        claimed = (float(claimed[0]), float(claimed[1]))
        try:
            verify_claim(event, *claimed)
        except LedgerError as exc:
            raise bad(str(exc)) from exc
    state.charges[rid] = Charge(entry["stage"], rid, event, claimed)
