"""The accountant a ledger is composed with: replace-one sampling without replacement (DP-SGD's
fixed-size batches) next to the unsampled Gaussian and Laplace events of the other stages."""

from __future__ import annotations

import dp_accounting as dpa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import LedgerError
from securefed.privacy.accounting import accountant_epsilon, grouped, make_accountant


def _wor(n: int, b: int, m: float, steps: int) -> dpa.DpEvent:
    return dpa.SelfComposedDpEvent(
        dpa.SampledWithoutReplacementDpEvent(n, b, dpa.GaussianDpEvent(m)), steps
    )


@settings(max_examples=15, deadline=None)
@given(st.floats(0.5, 20.0), st.floats(0.5, 20.0), st.integers(1, 50))
def test_replace_one_rdp_reads_unsampled_events_alike(m: float, b: float, count: int) -> None:
    """Gaussian and Laplace events (normalised by their sensitivity) get the same RDP curve under
    dp-accounting's REPLACE_ONE and ADD_OR_REMOVE_ONE relations: moving a ledger to the REPLACE_ONE
    accountant when it holds a DP-SGD event changes nothing for the other stages."""
    events = [dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(m), count), dpa.LaplaceDpEvent(b)]
    orders = [1.5, 2, 4, 8, 16, 32]
    curves = []
    for rel in (dpa.NeighboringRelation.REPLACE_ONE, dpa.NeighboringRelation.ADD_OR_REMOVE_ONE):
        acc = dpa.rdp.RdpAccountant(orders=orders, neighboring_relation=rel)
        acc.compose(dpa.ComposedDpEvent(events))
        curves.append(list(acc._rdp))
    assert curves[0] == pytest.approx(curves[1], rel=1e-12)


def test_sampling_without_replacement_amplifies_and_is_composed_by_replace_one_rdp() -> None:
    full = dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(4.0), 40)
    eps_full = accountant_epsilon([full], 1e-5, "rdp")
    eps = [accountant_epsilon([_wor(n, 2, 4.0, 40)], 1e-5, "rdp") for n in (3, 6, 12, 48)]
    assert eps == sorted(eps, reverse=True)  # a larger population amplifies more
    # At 2 of 3 the bound is looser than no amplification (the plan then charges the plain
    # Gaussian: tests/federation/test_dpsgd_site.py::test_plan_uses_the_tighter_bound).
    assert eps[0] > eps_full
    assert all(e < eps_full for e in eps[1:])
    # PLD has no such event: the ledger uses RDP with REPLACE_ONE whatever privacy.accountant says.
    assert accountant_epsilon([_wor(6, 2, 4.0, 40)], 1e-5, "pld") == pytest.approx(eps[1])
    acc = make_accountant("pld", [_wor(6, 2, 4.0, 1)])
    assert acc.neighboring_relation == dpa.NeighboringRelation.REPLACE_ONE


def test_one_ledger_cannot_mix_neighbouring_relations() -> None:
    poisson = dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(2.0))
    with pytest.raises(LedgerError, match="one neighbouring relation"):
        accountant_epsilon([poisson, _wor(6, 2, 4.0, 1)], 1e-5, "rdp")


def test_grouping_equal_events_is_the_same_composition() -> None:
    a, b = dpa.GaussianDpEvent(3.0), _wor(6, 2, 5.0, 3)
    events = [a, b, a, b, b]
    merged = grouped(events)
    assert len(merged) == 2
    acc1, acc2 = make_accountant("rdp", events), make_accountant("rdp", events)
    acc1.compose(dpa.ComposedDpEvent(events))
    acc2.compose(dpa.ComposedDpEvent(merged))
    assert acc1.get_epsilon(1e-5) == pytest.approx(acc2.get_epsilon(1e-5), rel=1e-12)
