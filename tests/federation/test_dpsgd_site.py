"""DP-SGD at a site: calibration over the study, Opacus rounds through the Flower client's fit,
one ledger charge per round, refusal past the budget before any noise, DP off leaves no ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.dpsgd import LAYOUT, PROTOCOL, dp_case, dp_task
from support.flower import write_assignments

from securefed.errors import BudgetExceededError, InstructionRefusedError
from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings
from securefed.models import build_model
from securefed.privacy import read_ledger
from securefed.privacy.accounting import accountant_epsilon
from securefed.protocol import load_protocol
from securefed.training import dpsgd
from securefed.training.local import get_weights, prepare_volumes


def _site(tmp_path: Path, *, rounds=2, finetune=1, enabled=True) -> tuple[SiteClient, Path]:
    text = PROTOCOL.format(rounds=rounds, finetune=finetune, enabled=str(enabled).lower())
    proto = tmp_path / "protocol.toml"
    proto.write_text(text)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    work = tmp_path / "site1"
    site = SiteSettings(1, str(tmp_path), str(proto), work_dir=str(work), assignments=str(asg))
    return SiteClient(dp_task(), site), work


def _config(client: SiteClient, rnd: int, cluster: int = -1) -> dict:
    # coordinates only: the site takes lr, steps and seed from its protocol
    return {"protocol-hash": client.loaded.sha256, "server-round": rnd, "cluster": cluster}


def test_plan_fits_every_planned_round() -> None:
    loaded = load_protocol_text(PROTOCOL.format(rounds=30, finetune=10, enabled="true"))
    plan = dpsgd.plan_dpsgd(loaded.protocol)
    assert plan.rounds == 30 + 2 * 10
    assert plan.steps_per_round == 1
    assert plan.planned_epsilon() <= 3.0
    # The calibration is tight: 2% less noise would overspend.
    events = dpsgd.DPSGDPlan(**{**plan.to_json(), "noise_multiplier": 0.98 * plan.noise_multiplier}
                             ).planned_events()  # fmt: skip
    assert accountant_epsilon(events, 1e-6, "rdp") > 3.0
    batches = dpsgd.dp_batches(5, 2, 20, seed=1)
    assert all(len(set(b)) == len(b) == 2 for b in batches)
    assert dpsgd.dp_batches(1, 2, 3, seed=1) == [[0]] * 3


def load_protocol_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "protocol.toml"
        path.write_text(text)
        return load_protocol(path)


def test_dp_rounds_train_and_charge_the_ledger(tmp_path: Path) -> None:
    client, work = _site(tmp_path)
    params = client.get_parameters({})
    weights, n, metrics = client.fit(params, _config(client, 1))
    # A DP protocol: the site keeps its train count and mean train loss (exact functions of its
    # cases) and sends the uniform FedAvg weight 1.
    assert n == 1
    assert metrics == {}
    assert any(not np.allclose(a, b) for a, b in zip(params, weights, strict=True))
    client.fit(weights, _config(client, 2))
    weights, n, _ = client.fit(weights, _config(client, 1, cluster=0))
    assert n == 1
    state = read_ledger(work / "ledger.jsonl")
    assert sorted(state.charges) == [
        "training/cluster-0/round-1", "training/global/round-1", "training/global/round-2"
    ]  # fmt: skip
    assert state.committed == set(state.charges)
    assert all(c.stage == "training" for c in state.charges.values())
    plan = dpsgd.plan_dpsgd(client.loaded.protocol)
    assert plan.rounds == 2 + 2 * 1
    # Every planned round charged: composed epsilon stays within dp_sgd.epsilon.
    assert accountant_epsilon(plan.planned_events(), 1e-6, "rdp") <= 3.0
    assert state.spent(delta=1e-6) <= 3.0


def test_past_budget_refuses_before_noise(tmp_path: Path) -> None:
    client, work = _site(tmp_path, rounds=1, finetune=0)
    params = client.get_parameters({})
    client.fit(params, _config(client, 1))
    with pytest.raises(InstructionRefusedError, match="answered once"):
        client.fit(params, _config(client, 1))  # a rerun of the round: refused before noise
    state = read_ledger(work / "ledger.jsonl")
    assert list(state.charges) == ["training/global/round-1"]
    # Directly: the refused round leaves the model untouched and never wraps it in Opacus.
    spec = client.spec
    model = build_model(spec)
    before = get_weights(model)
    plan = dpsgd.plan_dpsgd(client.loaded.protocol)
    ledger = dpsgd.site_ledger(client.loaded, 1, work)
    data = prepare_volumes([dp_case("a"), dp_case("b")], spec)
    with pytest.raises(BudgetExceededError):
        dpsgd.train_dp_round(model, data, spec, plan=plan, ledger=ledger, release_id="x",
                             lr=0.05, seed=0)  # fmt: skip
    assert all(np.array_equal(a, b) for a, b in zip(before, get_weights(model), strict=True))
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_dp_off_leaves_the_ledger_untouched(tmp_path: Path) -> None:
    client, work = _site(tmp_path, enabled=False)
    torch.manual_seed(0)
    params = client.get_parameters({})
    _weights, n, metrics = client.fit(params, _config(client, 1))
    assert n == 3
    assert not (work / "ledger.jsonl").exists()
    assert metrics["loss"] >= 0  # a plain protocol may send its loss (the report says so)


def test_dp_batches_come_from_site_secrets_not_the_servers_seed(
    tmp_path: Path, monkeypatch
) -> None:
    """The server's round seed decides nothing in a DP-SGD round: two rounds with the same server
    seed sample different batches (fresh os.urandom secrets); only a simulation's unsafe noise
    seed makes them reproducible (privacy-claims issue, finding 4)."""
    client, work = _site(tmp_path)
    spec = client.spec
    plan = dpsgd.plan_dpsgd(client.loaded.protocol)
    data = prepare_volumes([dp_case(s) for s in "abcdefgh"], spec)
    seen: list[list[list[int]]] = []
    real = dpsgd.dp_batches

    def recording(n, batch, steps, seed, groups=None, population=0):  # noqa: ANN001, ANN202
        out = real(n, batch, steps, seed, groups, population)
        seen.append(out)
        return out

    monkeypatch.setattr(dpsgd, "dp_batches", recording)
    for i in range(5):  # 4 unseeded rounds: all equal by chance with probability 28^-3
        ledger = dpsgd.site_ledger(client.loaded, 1, work / f"ledger-{i}")
        dpsgd.train_dp_round(
            build_model(spec), data, spec, plan=plan, ledger=ledger, release_id=f"r{i}",
            lr=0.05, seed=0, noise_seed=None if i < 4 else 7,
        )  # fmt: skip
    assert len({str(b) for b in seen[:4]}) > 1, "batches followed the server's seed"
    ledger = dpsgd.site_ledger(client.loaded, 1, work / "ledger-again")
    dpsgd.train_dp_round(
        build_model(spec), data, spec, plan=plan, ledger=ledger, release_id="again",
        lr=0.05, seed=123, noise_seed=7,
    )  # fmt: skip
    assert seen[4] == seen[5]  # seeded simulation: reproducible, whatever the server's seed


def test_plan_uses_the_tighter_bound() -> None:
    """Replace-one: a population of 8 patients amplifies (the step is a sampled-without-
    replacement event and less noise is needed than without amplification); 2 of 3 does not,
    and the step stays the plain Gaussian. Finetuning rounds are planned unamplified."""
    import dp_accounting as dpa

    text = PROTOCOL.format(rounds=30, finetune=10, enabled="true")
    loaded = load_protocol_text(text)
    plan = dpsgd.plan_dpsgd(loaded.protocol)
    none = dpsgd.plan_dpsgd(
        load_protocol_text(text.replace("population = 8", 'amplification = "none"')).protocol
    )
    assert plan.sampling == "without-replacement"
    assert none.sampling == "none"
    assert plan.noise_multiplier < 0.8 * none.noise_multiplier
    assert isinstance(plan.step_event(), dpa.SampledWithoutReplacementDpEvent)
    assert isinstance(plan.step_event(population=3), dpa.GaussianDpEvent)
    assert isinstance(plan.planned_events()[-1].event, dpa.GaussianDpEvent)  # finetuning
    assert plan.planned_epsilon() <= 3.0


def test_poisson_batches_are_independent_and_may_be_empty() -> None:
    batches = dpsgd.poisson_batches(4, 0.25, 400, seed=3)
    sizes = [len(b) for b in batches]
    assert 0 in sizes
    assert max(sizes) <= 4
    assert abs(sum(sizes) / 400 - 1.0) < 0.25  # expected size q n = 1
    groups = ["p1", "p1", "p2", "p3"]
    for b in dpsgd.poisson_batches(4, 0.9, 50, seed=1, groups=groups):
        assert len({groups[i] for i in b}) == len(b)  # at most one case per patient


def test_poisson_round_with_empty_batches_still_adds_noise(tmp_path: Path) -> None:
    """Add-remove-one: Poisson sampling; a round whose batches are all empty changes the model
    (noise only) and is charged like any other round."""
    text = (
        PROTOCOL.format(rounds=2, finetune=0, enabled="true")
        .replace("total_delta = 1e-5", 'total_delta = 1e-5\nneighbouring = "add-remove-one"')
        .replace("population = 8", "sampling_rate = 0.001")
    )
    loaded = load_protocol_text(text)
    plan = dpsgd.plan_dpsgd(loaded.protocol)
    assert plan.sampling == "poisson"
    spec = loaded.protocol.training
    model = build_model(spec)
    before = get_weights(model)
    ledger = dpsgd.site_ledger(loaded, 1, tmp_path)
    data = prepare_volumes([dp_case("a"), dp_case("b"), dp_case("c")], spec)
    out = dpsgd.train_dp_round(model, data, spec, plan=plan, ledger=ledger, release_id="r1",
                               lr=0.05, seed=0)  # fmt: skip
    assert out["steps"] == 0  # nobody sampled at q = 0.001 (probability 0.997)
    assert any(not np.allclose(a, b) for a, b in zip(before, get_weights(model), strict=True))
    assert list(read_ledger(tmp_path / "ledger.jsonl").committed) == ["r1"]


def test_finetuning_rounds_are_charged_unamplified(tmp_path: Path) -> None:
    """A cluster round's population can change when one patient is replaced (its cluster may
    change): the client charges it as the plain Gaussian, a global round over 8 patients as the
    sampled event."""
    client, work = _site(tmp_path)
    data = prepare_volumes([dp_case(s) for s in "abcdefgh"], client.spec)
    plan = dpsgd.plan_dpsgd(client.loaded.protocol)
    ledger = dpsgd.site_ledger(client.loaded, 1, work)
    for rid, finetuning in (("g", False), ("c", True)):
        dpsgd.train_dp_round(build_model(client.spec), data, client.spec, plan=plan,
                             ledger=ledger, release_id=rid, lr=0.05,
                             finetuning=finetuning)  # fmt: skip
    charges = read_ledger(work / "ledger.jsonl").charges
    assert type(charges["g"].event.event).__name__ == "SampledWithoutReplacementDpEvent"
    assert type(charges["c"].event.event).__name__ == "GaussianDpEvent"


def test_training_finds_the_patients_where_the_stages_do(tmp_path: Path) -> None:
    """DP-SGD's patients (several cases of one patient share a step's sampling and its charge)
    come from the same partition file as the feature release's: the node config's
    ``partitions``, else the data folder's ``<partitioning>.csv`` (before, training read only the
    node config, so a deployment without it treated each case as its own patient)."""
    from securefed.federation.site_stages import site_patients

    client, _ = _site(tmp_path)
    (tmp_path / "partitioning_1.csv").write_text(
        "Partition_ID,Subject_ID,Patient_ID\n1,S01_000,P1\n1,S01_001,P1\n1,S01_002,P2\n"
    )
    assert not client.site.partitions
    expected = {"S01_000": "P1", "S01_001": "P1", "S01_002": "P2"}
    assert client._patients() == expected
    assert site_patients(client.site, client.loaded.protocol.data.partitioning) == expected
    other = tmp_path / "elsewhere.csv"
    other.write_text("Partition_ID,Subject_ID,Patient_ID\n1,S01_000,Q\n1,S01_001,Q\n")
    client.site = client.site.__class__(**{**client.site.__dict__, "partitions": str(other)})
    assert client._patients() == {"S01_000": "Q", "S01_001": "Q"}
