"""Rounds only move forward: a coordinator cannot replay a round (the same coordinates and start
model) to another set of sites and subtract the two sums. Each site trains in each round number
of a phase once (securefed.federation.site_runtime.SiteRuntime.advance_round), kept in its state
folder across restarts; a resumed server phase goes on at the next round number."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.hostile import Federation, pinned_federation, secagg_until_unmask

from securefed.federation.site_rules import ReplyCode
from securefed.federation.site_runtime import ROUNDS_FILE
from securefed.training.checkpoints import PhaseState


def _refused(fed: Federation, reply, pid: int) -> None:
    code = ReplyCode.INSTRUCTION_REFUSED
    assert reply.has_error()
    assert reply.error.code == int(code)
    assert not reply.has_content()
    assert int(code) in [int(r["code"]) for r in fed.refusals(pid)]


def test_a_round_is_trained_in_once_and_rounds_only_move_forward(tmp_path: Path) -> None:
    fed = Federation(tmp_path / "fed", aggregation="fedavg")
    assert not fed.fit(1, fed.honest_config(rnd=1)).has_error()
    fed.loads.clear()
    _refused(fed, fed.fit(1, fed.honest_config(rnd=1)), 1)  # the same round again
    assert fed.loads == []  # refused before any case is loaded
    assert not fed.fit(1, fed.honest_config(rnd=2)).has_error()
    _refused(fed, fed.fit(1, fed.honest_config(rnd=1)), 1)  # going back
    # another phase has its own counter; another site its own
    assert not fed.fit(1, fed.honest_config(rnd=1, cluster=0)).has_error()
    assert not fed.fit(2, fed.honest_config(rnd=1)).has_error()


def test_the_counter_survives_a_restart_of_the_site(tmp_path: Path) -> None:
    """A new ClientApp (a restarted site process) reads the counter from the state folder."""
    fed = Federation(tmp_path / "fed", aggregation="fedavg")
    assert not fed.fit(1, fed.honest_config(rnd=1)).has_error()
    assert (Path(fed.sites[1].work_dir) / ROUNDS_FILE).is_file()
    restarted = Federation(tmp_path / "fed", aggregation="fedavg")
    _refused(restarted, restarted.fit(1, restarted.honest_config(rnd=1)), 1)
    assert not restarted.fit(1, restarted.honest_config(rnd=2)).has_error()


def test_a_secagg_round_replayed_without_one_site_is_refused(tmp_path: Path) -> None:
    """The replay of the review: after an honest SecAgg+ round over sites {1,2,3}, the same round
    again over {1,2} would give x_3 as the difference of the sums. The sites that trained refuse
    to train in it again (their masked vector never leaves)."""
    fed = pinned_federation(tmp_path / "fed")
    assert not any(r.has_error() for r in secagg_until_unmask(fed))
    fed.loads.clear()
    replay = secagg_until_unmask(fed, sites=(1, 2))
    for pid, reply in zip((1, 2), replay, strict=True):
        _refused(fed, reply, pid)
    assert fed.loads == []


@pytest.mark.parametrize(
    ("completed", "started", "first", "lost"),
    [(-1, -1, 0, []), (0, 0, 1, []), (1, 1, 2, []), (1, 2, 3, [2]), (2, 2, 3, [])],
)
def test_a_resumed_phase_never_sends_a_started_round_again(completed, started, first, lost) -> None:
    from securefed.federation.server_app import _first_round

    state = PhaseState(config_digest="x", completed_round=completed, started_round=started)
    assert _first_round(state, "global") == first
    assert state.lost_rounds == lost
    _first_round(state, "global")  # resumed twice: the lost round is listed once
    assert state.lost_rounds == lost
