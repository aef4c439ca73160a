"""A feature release survives an interruption at every point without drawing fresh noise under
one charge (a retry resends the kept bytes), and its release id is random, never a function of
the data (issue: privacy claims, findings 1 and 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.site import DEMO, keys_for, local_dp_protocol, make_featdir

from securefed.errors import BudgetExceededError
from securefed.privacy.ledger import read_ledger
from securefed.protocol import load_protocol
from securefed.server.collect import collect_features
from securefed.site import release as site_release
from securefed.site.release import release_site_features
from securefed.transport import messages
from securefed.trust import accept_unsigned_simulation as accepted


class Crash(RuntimeError):
    """Stands in for the process dying at a point of the release."""


def _setup(tmp_path: Path):
    demo = load_protocol(DEMO)
    featdir = make_featdir(tmp_path, demo.protocol.radiomics.model_dump(mode="json"))
    loaded = load_protocol(local_dp_protocol(tmp_path))
    return loaded, featdir, keys_for(tmp_path)


def _release(loaded, featdir, keys, tmp_path):
    return release_site_features(
        featdir,
        accepted(loaded),
        keys["site-1"],
        keys["server_pub"],
        tmp_path / "outbox",
        tmp_path / "state-1",
    )


@pytest.mark.parametrize("point", ["before-outbox-write", "after-outbox-write"])
def test_a_retry_resends_the_same_bytes_under_one_charge(tmp_path, monkeypatch, point) -> None:
    loaded, featdir, keys = _setup(tmp_path)
    real_write = messages.write_message
    kept: list[bytes] = []

    def dying_write(path, data):  # noqa: ANN001, ANN202
        kept.append(bytes(data))
        if point == "after-outbox-write":
            real_write(path, data)
        raise Crash(point)

    monkeypatch.setattr(site_release, "write_message", dying_write)
    with pytest.raises(Crash):
        _release(loaded, featdir, keys, tmp_path)
    ledger = read_ledger(tmp_path / "state-1" / "ledger.jsonl")
    assert len(ledger.charges) == 1
    assert not ledger.committed
    monkeypatch.setattr(site_release, "write_message", real_write)
    result = _release(loaded, featdir, keys, tmp_path)
    sent = result.envelope.read_bytes()
    assert sent == kept[0], "the retry drew fresh noise instead of resending the kept release"
    ledger = read_ledger(tmp_path / "state-1" / "ledger.jsonl")
    assert len(ledger.charges) == 1
    assert ledger.committed == set(ledger.charges)
    once = release_site_features(
        featdir,
        accepted(loaded),
        keys["site-1"],
        keys["server_pub"],
        tmp_path / "o2",
        tmp_path / "clean",
    )
    assert once.epsilon == 4.0
    assert ledger.spent() == pytest.approx(read_ledger(tmp_path / "clean" / "ledger.jsonl").spent())
    assert not list((tmp_path / "state-1" / "pending").iterdir())
    # The server accepts the resent release once.
    collected = collect_features(
        tmp_path / "outbox", loaded, keys["server"], tmp_path / "collected", tmp_path / "server",
        site_public_keys=keys["site_pubs"],
    )  # fmt: skip
    assert len(collected.subject_ids) == 6


def test_a_crash_before_sealing_stays_charged_and_a_new_release_needs_new_budget(
    tmp_path, monkeypatch
) -> None:
    """Noise drawn but nothing kept or sent: the next run cannot know what was drawn, so only a
    new release under a new charge may follow (the budget over-counts, never under-counts);
    here the stage's budget holds one release, so the rerun is refused before any noise."""
    loaded, featdir, keys = _setup(tmp_path)

    def dying_seal(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise Crash("before-seal")

    real_seal = site_release.seal_message
    monkeypatch.setattr(site_release, "seal_message", dying_seal)
    with pytest.raises(Crash):
        _release(loaded, featdir, keys, tmp_path)
    monkeypatch.setattr(site_release, "seal_message", real_seal)
    with pytest.raises(BudgetExceededError, match="refused before any noise"):
        _release(loaded, featdir, keys, tmp_path)
    ledger = read_ledger(tmp_path / "state-1" / "ledger.jsonl")
    assert len(ledger.charges) == 1
    assert not ledger.committed
    assert not (tmp_path / "outbox" / "site-1.features.env").exists()


def test_release_ids_are_random_not_derived_from_the_data(tmp_path) -> None:
    """The id travels in the sealed metadata: the same data released twice gets two unrelated
    ids (a hash of the data would let anyone who enumerates datasets tell neighbours apart)."""
    loaded, featdir, keys = _setup(tmp_path)
    ids = []
    for run in range(2):
        state = tmp_path / f"state-{run}"
        release_site_features(
            featdir,
            accepted(loaded),
            keys["site-1"],
            keys["server_pub"],
            tmp_path / f"out-{run}",
            state,
        )
        (rid,) = read_ledger(state / "ledger.jsonl").charges
        ids.append(rid)
    assert ids[0] != ids[1]
    assert all(rid.startswith("features-") and len(rid) == len("features-") + 32 for rid in ids)
