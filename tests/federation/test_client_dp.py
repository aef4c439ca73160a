"""Client-level DP in Flower's simulation engine: every site's update leaves clipped, rounded and
noised inside SecAgg+, the server decodes the mean update, each round is charged to each site's
ledger before any noise, and a site past its budget sends nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.flower import PROTOCOL, make_task, write_assignments

from securefed.errors import BudgetExceededError
from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.privacy import read_ledger
from securefed.privacy.ddg import flatten
from securefed.protocol import load_protocol
from securefed.training.client_dp import site_plan

LAYOUT = {
    1: [("train", 0)] * 3 + [("val", 0)] * 2,
    2: [("train", 0)] * 2 + [("train", 1)] + [("val", 1)],
    3: [("train", 1)] * 3 + [("train", 2)] + [("val", 1), ("val", 2)],
}


def _protocol(folder: Path, *, epsilon: float, clip: float, rounds: int = 1, dp: bool = True):
    text = PROTOCOL.format(rounds=rounds, finetune=1, aggregation="secagg+", min_sites=2,
                           timeout=120)  # fmt: skip
    table = (f"[training.client_dp]\nenabled = true\nepsilon = {epsilon}\nmax_sites = 3\n"
             f"clip_norm = {clip}\n" if dp else "")  # fmt: skip
    text = text.replace("total_epsilon = 1.0", f"total_epsilon = {epsilon}")
    text = text.replace("[secure_aggregation]", table + "[secure_aggregation]")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "protocol.toml").write_text(text)
    return folder / "protocol.toml"


def _sites(folder: Path, proto: Path) -> tuple[list[SiteSettings], Path]:
    asg = write_assignments(folder / "clusters.csv", LAYOUT)
    sites = [SiteSettings(partition_id=p, data_dir=str(folder), protocol=str(proto),
                          assignments=str(asg), work_dir=str(folder / f"site{p}"))
             for p in LAYOUT]  # fmt: skip
    return sites, asg


def _config(loaded, rnd: int, **extra) -> dict:
    return {"protocol-hash": loaded.sha256, "server-round": rnd, "cluster": -1, **extra}


def test_client_dp_phase_is_the_noised_mean_of_the_clipped_updates(tmp_path: Path) -> None:
    proto = _protocol(tmp_path / "dp", epsilon=1000.0, clip=0.05)
    sites, asg = _sites(tmp_path / "dp", proto)
    loaded = load_protocol(proto)
    cfg = phase_config(loaded, out_dir=tmp_path / "dp" / "global", sites=dict.fromkeys(LAYOUT),
                       assignments=asg)  # fmt: skip
    result = run_phase(cfg, sites, task=make_task())
    assert [h["round"] for h in result.history] == [1]
    assert result.history[0]["num_sites"] == 3
    assert result.history[0]["weight_sum"] == 3

    # The reference: each site's own round (same seeds, same data) in clear, clipped to 0.05
    # and averaged with uniform weights.
    start = SiteClient(make_task(), sites[0]).get_parameters({})
    plain = _protocol(tmp_path / "plain", epsilon=1000.0, clip=0.05, dp=False)
    updates = []
    for site in _sites(tmp_path / "plain", plain)[0]:
        client = SiteClient(make_task(), site)
        new, _, _ = client.fit(start, _config(client.loaded, 1))
        u = flatten(new) - flatten(start)
        assert np.linalg.norm(u) > 0.05  # the clip binds
        updates.append(u * (0.05 / np.linalg.norm(u)))
    expected = flatten(start) + np.mean(updates, axis=0)
    got = flatten(result.best_weights)
    plan = site_plan(loaded.protocol, expected.size)
    # Noise of the mean per value: sqrt(3) shares of sigma_units * gamma over 3 sites; rounding
    # adds at most gamma per site.
    std = plan.sigma_units * plan.gamma * np.sqrt(3) / 3
    assert np.abs(got - expected).max() < 6 * std + 3 * plan.gamma
    assert np.linalg.norm(got - flatten(start)) > 0.01  # the round moved the model

    for p in LAYOUT:  # one charge per site and round, committed, with the plan's event
        state = read_ledger(tmp_path / "dp" / f"site{p}" / "ledger.jsonl")
        assert sorted(state.charges) == ["training/global/round-1"]
        assert state.committed == set(state.charges)
        charge = state.charges["training/global/round-1"]
        assert charge.stage == "training"
        assert charge.event == plan.round_event()


def _spend_elsewhere(loaded, site, event, n: int) -> None:
    """``n`` committed charges of ``event`` in the site's ledger (another stage's spends)."""
    from securefed.training.dpsgd import site_ledger

    ledger = site_ledger(loaded, site.partition_id, site.work_dir)
    for i in range(n):
        with ledger.charge("training", f"training/elsewhere/round-{i + 1}", event):
            pass


def test_a_site_past_its_budget_refuses_before_any_noise(tmp_path: Path, monkeypatch) -> None:
    proto = _protocol(tmp_path, epsilon=2.0, clip=1.0, rounds=1)
    sites, _ = _sites(tmp_path, proto)
    client = SiteClient(make_task(), sites[0])
    start = client.get_parameters({})
    plan = site_plan(client.loaded.protocol, flatten(start).size)
    assert plan.rounds == 1 + 10  # global + clustering.k (10) clusters x 1 finetuning round
    client.fit(start, _config(client.loaded, 1))  # a planned round fits
    # the rest of the plan spent elsewhere (each round number is trained in once, so a
    # coordinator cannot make the site rerun a round to drain its budget)
    _spend_elsewhere(client.loaded, sites[0], plan.round_event(), plan.rounds - 1)
    drawn: list[float] = []

    def record(self, sigma, shape):
        drawn.append(sigma)
        return np.zeros(shape, np.int64)

    monkeypatch.setattr("securefed.privacy.noise.SecureNoise.discrete_gaussian", record)
    with pytest.raises(BudgetExceededError):
        client.fit(start, _config(client.loaded, 1, cluster=0))
    assert drawn == []  # refused before the noise
    state = read_ledger(Path(sites[0].work_dir) / "ledger.jsonl")
    assert len(state.charges) == plan.rounds
    assert state.spent(1e-6) <= 2.0 + 1e-9


def test_a_site_without_cases_of_a_cluster_still_sends_noise(tmp_path: Path) -> None:
    """Under all-sites membership an empty cluster's reply is the zero update plus the site's
    noise share: as noisy as any other, and charged like one."""
    proto = _protocol(tmp_path, epsilon=8.0, clip=1.0)
    sites, _ = _sites(tmp_path, proto)
    client = SiteClient(make_task(), sites[0])
    start = client.get_parameters({})
    (vector,), n, metrics = client.fit(start, _config(client.loaded, 1))
    assert n == 1
    assert metrics == {}
    plan = site_plan(client.loaded.protocol, flatten(start).size)
    assert vector.shape == (plan.padded_dim,)
    assert vector.dtype == np.float64
    assert np.all(vector == np.rint(vector))
    assert np.all((vector >= -plan.modulus // 2) & (vector < plan.modulus // 2))


def test_training_stops_cleanly_when_a_budget_runs_out(tmp_path: Path) -> None:
    """The server asks every site before each DP round whether its ledger can pay it; the phase
    stops at the last completed round with a message (no failure, nothing drawn past it)."""

    text = PROTOCOL.format(rounds=3, finetune=0, aggregation="secagg+", min_sites=2, timeout=120)
    text = text.replace("total_epsilon = 1.0", "total_epsilon = 4.0").replace(
        "[secure_aggregation]",
        "[training.client_dp]\nenabled = true\nepsilon = 4.0\nmax_sites = 3\n[secure_aggregation]",
    )
    proto = tmp_path / "protocol.toml"
    proto.write_text(text)
    sites, asg = _sites(tmp_path, proto)
    loaded = load_protocol(proto)
    cfg = phase_config(loaded, out_dir=tmp_path / "first", sites=dict.fromkeys(LAYOUT),
                       assignments=asg)  # fmt: skip
    assert cfg.dp_training == "client-dp"
    assert cfg.rounds == 3
    # every site has already spent one round's worth elsewhere: rounds 1 and 2 fit its budget,
    # round 3 would be the 4th of 3 planned rounds
    client = SiteClient(make_task(), sites[0])
    event = site_plan(loaded.protocol, flatten(client.get_parameters({})).size).round_event()
    for site in sites:
        _spend_elsewhere(loaded, site, event, 1)
    again = run_phase(cfg, sites, task=make_task())
    assert [h["round"] for h in again.history] == [1, 2]
    assert again.stopped is not None
    assert "stopped before round 3" in again.stopped
    assert "[1, 2, 3]" in again.stopped
    assert "fewer than 2 sites" in again.stopped
    for p in LAYOUT:
        state = read_ledger(tmp_path / f"site{p}" / "ledger.jsonl")
        assert len(state.charges) == 3
        assert state.committed == set(state.charges)
        assert state.spent(1e-6) <= 4.0 + 1e-9
