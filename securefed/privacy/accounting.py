"""Composition of a site's releases with dp-accounting, and DpEvent <-> JSON.

Conventions (every caller must follow them):
- An event's noise multiplier is normalised by the sensitivity under the protocol's neighbouring
  relation: ``GaussianDpEvent(m)`` means "N(0, m^2) against N(1, m^2)"; ``LaplaceDpEvent(b)``
  means "Laplace(b) against Laplace shifted by 1". The accountants are therefore built with
  dp-accounting's ADD_OR_REMOVE_ONE relation, which reads these events literally.
  (Its REPLACE_ONE relation would double the Gaussian sensitivity in PLD but not in RDP.)
  Poisson-sampled events (DP-SGD under add-remove-one) are read with that relation. Events
  sampled WITHOUT replacement (DP-SGD's fixed-size batches under replace-one) exist only for
  replace-one: a ledger holding one is composed by the RDP accountant with dp-accounting's
  REPLACE_ONE relation (whatever ``privacy.accountant``; its PLD has no such event), which reads
  Gaussian and Laplace events exactly as ADD_OR_REMOVE_ONE does in RDP
  (tests/privacy/test_accounting.py::test_replace_one_rdp_reads_unsampled_events_alike).
- Spend: the smaller of two valid upper bounds on the composed epsilon at the site's delta:
  (a) the protocol's accountant (RDP or PLD) over every event, and (b) basic composition of the
  exact (epsilon, delta) pairs that the ledger verified for single Gaussian/Laplace events, plus
  the accountant over the rest at the delta left over. A single analytic-Gaussian release is thus
  charged exactly its calibrated epsilon, not the looser RDP figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import attr
import dp_accounting
from dp_accounting import pld, rdp

from securefed.errors import LedgerError
from securefed.privacy.calibration import gaussian_log_delta

__all__ = [
    "EVENT_TYPES",
    "Charge",
    "accountant_epsilon",
    "composed_epsilon",
    "event_from_json",
    "event_to_json",
    "grouped",
    "make_accountant",
    "verify_claim",
]

EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        dp_accounting.GaussianDpEvent,
        dp_accounting.LaplaceDpEvent,
        dp_accounting.SelfComposedDpEvent,
        dp_accounting.ComposedDpEvent,
        dp_accounting.PoissonSampledDpEvent,
        dp_accounting.SampledWithoutReplacementDpEvent,
        dp_accounting.SampledWithReplacementDpEvent,
        dp_accounting.NoOpDpEvent,
        dp_accounting.NonPrivateDpEvent,
    )
}


def event_to_json(event: dp_accounting.DpEvent) -> dict[str, Any]:
    """A DpEvent as a JSON-able dict ``{"type": ClassName, field: value, ...}``."""
    name = type(event).__name__
    cls = EVENT_TYPES.get(name)
    if cls is None or cls is not type(event):
        raise LedgerError(
            f"event type {name} cannot be recorded in the ledger "
            f"(supported: {', '.join(sorted(EVENT_TYPES))})"
        )
    out: dict[str, Any] = {"type": name}
    for f in attr.fields(cls):
        value = getattr(event, f.name)
        if isinstance(value, dp_accounting.DpEvent):
            out[f.name] = event_to_json(value)
        elif isinstance(value, list | tuple):
            out[f.name] = [event_to_json(v) for v in value]
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise LedgerError(f"event {name}.{f.name}: unsupported value {value!r}")
        else:
            if not math.isfinite(value):
                raise LedgerError(f"event {name}.{f.name}: non-finite value {value!r}")
            out[f.name] = value
    return out


def event_from_json(data: Any) -> dp_accounting.DpEvent:
    """Inverse of :func:`event_to_json` (only the whitelisted event types)."""
    if not isinstance(data, dict) or data.get("type") not in EVENT_TYPES:
        raise LedgerError(f"unknown DP event {data!r}")
    cls = EVENT_TYPES[data["type"]]
    kwargs: dict[str, Any] = {}
    for f in attr.fields(cls):
        if f.name not in data:
            raise LedgerError(f"DP event {data['type']}: missing field {f.name!r}")
        value = data[f.name]
        if isinstance(value, dict):
            value = event_from_json(value)
        elif isinstance(value, list):
            value = [event_from_json(v) for v in value]
        kwargs[f.name] = value
    extra = set(data) - {"type"} - set(kwargs)
    if extra:
        raise LedgerError(f"DP event {data['type']}: unknown field(s) {sorted(extra)}")
    return cls(**kwargs)


# RDP orders for ledgers with sampling without replacement: dp-accounting's bound costs O(order)
# per integer order (its default grid up to 1024 takes ~0.6 s per event); any order gives a valid
# bound, and DP-SGD's optimum at epsilon 0.5-20 lies between 2 and 64.
WOR_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64,
    96, 128,
)  # fmt: skip


def grouped(events: Sequence[dp_accounting.DpEvent]) -> list[dp_accounting.DpEvent]:
    """``events`` with equal events merged into one SelfComposedDpEvent (the same composition;
    an accountant then evaluates each distinct event once)."""
    counts: dict[str, tuple[dp_accounting.DpEvent, int]] = {}
    for event in events:
        key = repr(event)
        counts[key] = (event, counts[key][1] + 1) if key in counts else (event, 1)
    return [e if n == 1 else dp_accounting.SelfComposedDpEvent(e, n) for e, n in counts.values()]


def _has(event: dp_accounting.DpEvent, cls: type) -> bool:
    if isinstance(event, cls):
        return True
    if isinstance(event, dp_accounting.SelfComposedDpEvent | dp_accounting.PoissonSampledDpEvent):
        return _has(event.event, cls)
    if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
        return _has(event.event, cls)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return any(_has(e, cls) for e in event.events)
    return False


def make_accountant(
    kind: str, events: Sequence[dp_accounting.DpEvent] = ()
) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant for ``events``: ``rdp`` (RdpAccountant) or ``pld`` (PLDAccountant),
    relation ADD_OR_REMOVE_ONE; when ``events`` hold a sampled-without-replacement event, the RDP
    accountant with REPLACE_ONE (see the module docstring)."""
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if kind not in ("rdp", "pld"):
        raise LedgerError(f"privacy.accountant: unknown accountant {kind!r} (rdp or pld)")
    wor = dp_accounting.SampledWithoutReplacementDpEvent
    if any(_has(e, wor) for e in events):
        if any(_has(e, dp_accounting.PoissonSampledDpEvent) for e in events):
            raise LedgerError(
                "the ledger holds both Poisson-sampled (add-remove-one) and without-replacement "
                "(replace-one) DP-SGD events: one study has one neighbouring relation"
            )
        return rdp.RdpAccountant(
            orders=WOR_ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
        )
    if kind == "rdp":
        return rdp.RdpAccountant(neighboring_relation=relation)
    return pld.PLDAccountant(neighboring_relation=relation)


def accountant_epsilon(events: Sequence[dp_accounting.DpEvent], delta: float, kind: str) -> float:
    """Composed epsilon at ``delta`` of ``events`` by the ``kind`` accountant (0 if none)."""
    if not events:
        return 0.0
    if delta <= 0:
        return math.inf
    acc = make_accountant(kind, events)
    try:
        acc.compose(dp_accounting.ComposedDpEvent(grouped(events)))
    except dp_accounting.UnsupportedEventError as exc:
        raise LedgerError(f"the {kind} accountant cannot compose these events: {exc}") from exc
    return float(acc.get_epsilon(delta))


def verify_claim(event: dp_accounting.DpEvent, epsilon: float, delta: float) -> None:
    """Check that ``event`` is exactly (epsilon, delta)-DP; raise LedgerError otherwise.
    Supported: Gaussian (Balle-Wang profile), Self-composed Gaussian (= one Gaussian of
    multiplier m / sqrt(count)) and Laplace (epsilon >= 1 / b)."""
    if not (math.isfinite(epsilon) and epsilon > 0 and 0 <= delta < 1):
        raise LedgerError(f"claimed (epsilon, delta) = ({epsilon}, {delta}) is not valid")
    m = None
    if isinstance(event, dp_accounting.GaussianDpEvent):
        m = event.noise_multiplier
    elif isinstance(event, dp_accounting.SelfComposedDpEvent) and isinstance(
        event.event, dp_accounting.GaussianDpEvent
    ):
        m = event.event.noise_multiplier / math.sqrt(event.count)
    if m is not None:
        ok = delta > 0 and gaussian_log_delta(epsilon, m, 1.0) <= math.log(delta) + 1e-9
    elif isinstance(event, dp_accounting.LaplaceDpEvent):
        ok = event.noise_multiplier > 0 and 1.0 / event.noise_multiplier <= epsilon * (1 + 1e-12)
    else:
        raise LedgerError(
            f"cannot verify an (epsilon, delta) claim for {type(event).__name__}; "
            "pass None and let the accountant measure it"
        )
    if not ok:
        raise LedgerError(
            f"{type(event).__name__} is not ({epsilon}, {delta})-DP: the claimed "
            "budget is below what the noise provides"
        )


@dataclass(frozen=True)
class Charge:
    """One recorded release: its event and, where verified, its exact (epsilon, delta)."""

    stage: str
    release_id: str
    event: dp_accounting.DpEvent
    claimed: tuple[float, float] | None = None


def composed_epsilon(charges: Sequence[Charge], delta: float, kind: str) -> float:
    """Site spend: epsilon at ``delta`` of composing every charge (see the module docstring)."""
    if not charges:
        return 0.0
    events = [c.event for c in charges]
    best = accountant_epsilon(events, delta, kind)
    known = [c.claimed for c in charges if c.claimed is not None]
    rest = [c.event for c in charges if c.claimed is None]
    known_eps = sum(k[0] for k in known)
    known_delta = sum(k[1] for k in known)
    if known and known_delta <= delta:
        left = delta - known_delta
        if not rest:
            best = min(best, known_eps)
        elif left > 0:
            best = min(best, known_eps + accountant_epsilon(rest, left, kind))
    return best
