"""Every plan from public values only (issue "every accepted epsilon", bug 1): over the space of
valid DP training protocols, a site's DP-SGD or client-DP plan and the events it charges are the
same whether it holds n or n + 1 train cases, and whether its n patients have one case or two
each; the charged epsilon equals an independent recomputation from dp-accounting primitives.

Before the fix the DP-SGD step count followed ``ceil(n / batch)``, the multiplier was calibrated
for the site's own patient count and the gradient divisor was ``min(batch, n)``: the first
assertion failed for every protocol without ``local_steps`` and every sampled one."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
import tomli_w
from dp_accounting import rdp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.dpsgd import dp_task
from support.flower import write_assignments

from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings
from securefed.privacy.accounting import WOR_ORDERS
from securefed.protocol import parse_protocol
from securefed.training import dpsgd


@st.composite
def dp_protocols(draw: Any) -> dict[str, Any]:
    """A valid simulation protocol with DP-SGD or client-level DP (every mode, relation,
    amplification and sampling the schema accepts)."""
    relation = draw(st.sampled_from(["replace-one", "add-remove-one"]))
    mechanism = draw(st.sampled_from(["dp-sgd", "client-dp"]))
    batch = draw(st.integers(1, 4))
    training: dict[str, Any] = {
        "model": "dp-unet", "optimizer": "sgd", "lr": 0.05, "batch_size": batch,
        "crop_size": [16, 16, 16], "global_rounds": draw(st.integers(1, 4)),
        "finetune_rounds": draw(st.integers(0, 2)), "local_steps": draw(st.integers(1, 5)),
        "local_epochs": draw(st.integers(1, 3)), "aggregation": "secagg+",
    }  # fmt: skip
    epsilon = draw(st.floats(1.0, 16.0))
    if mechanism == "dp-sgd":
        noise = draw(st.sampled_from(["float", "discrete-gaussian"]))
        amplification = "none" if noise == "discrete-gaussian" else draw(
            st.sampled_from(["sampling", "none"]))  # fmt: skip
        dp: dict[str, Any] = {"enabled": True, "epsilon": epsilon, "noise": noise,
                              "amplification": amplification}  # fmt: skip
        if amplification == "sampling" and relation == "replace-one":
            dp["population"] = draw(st.integers(batch + 1, 40))
        if amplification == "sampling" and relation == "add-remove-one":
            dp["sampling_rate"] = draw(st.floats(0.01, 1.0))
        training["dp_sgd"] = dp
    else:
        training["client_dp"] = {"enabled": True, "epsilon": epsilon, "max_sites": 3,
                                 "clip_norm": draw(st.floats(0.1, 5.0))}  # fmt: skip
    continuous = mechanism == "dp-sgd" and training["dp_sgd"]["noise"] == "float"
    # PLD composes continuous mechanisms only (the schema refuses it for the discrete ones)
    accountant = draw(st.sampled_from(["rdp", "pld"])) if continuous else "rdp"
    return {
        "schema_version": 1,
        "study": {"name": "plan-independence", "mode": "simulation"},
        "privacy": {"neighbouring": relation, "total_epsilon": math.inf,
                    "accountant": accountant},
        "clustering": {"k": 2, "k_selection": "fixed", "k_min": 2, "k_max": 2},
        "training": training,
        "secure_aggregation": {"num_shares": 3, "reconstruction_threshold": 2,
                               "quantization_range": 2**22},
        "evaluation": {"roi_size": [16, 16, 16]},
    }  # fmt: skip


def _client(folder: Path, data: dict[str, Any], n: int, cases_per_patient: int) -> SiteClient:
    """Site 1 with ``n`` train cases of cluster 0 (and one of cluster 1), in patients of
    ``cases_per_patient`` cases each, per its own partition file."""
    folder.mkdir(parents=True, exist_ok=True)
    proto = folder / "protocol.toml"
    proto.write_text(tomli_w.dumps(data))
    layout = {1: [("train", 0)] * n + [("train", 1), ("val", 0)]}
    asg = write_assignments(folder / "clusters.csv", layout)
    rows = ["Partition_ID,Subject_ID,Patient_ID"]
    for i, _ in enumerate(layout[1]):
        rows.append(f"1,S01_{i:03d},P{i // cases_per_patient}")
    parts = folder / "partitions.csv"
    parts.write_text("\n".join(rows) + "\n")
    site = SiteSettings(1, str(folder), str(proto), work_dir=str(folder / "site"),
                        assignments=str(asg), partitions=str(parts))  # fmt: skip
    return SiteClient(dp_task(), site)


def _config(client: SiteClient, cluster: int) -> dict[str, Any]:
    t = client.spec
    return {"protocol-hash": client.loaded.sha256, "server-round": 1, "cluster": cluster,
            "lr": t.lr if cluster < 0 else t.finetune_lr}  # fmt: skip


def _site_view(client: SiteClient) -> tuple[Any, ...]:
    """Everything the site's plan decides, for the global phase and a cluster phase."""
    events = tuple(client._next_event(_config(client, c)) for c in (-1, 0))
    if client.spec.dp_sgd.enabled:
        plan = dpsgd.plan_dpsgd(client.loaded.protocol)
        return (*events, plan.steps_per_round, plan.noise_multiplier, plan.batch_size,
                plan.population, plan.sampling_rate)  # fmt: skip
    return events


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=dp_protocols(), n=st.integers(1, 12))
def test_the_plan_and_its_charges_do_not_depend_on_the_sites_data(data: dict, n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        views = [
            _site_view(_client(Path(d) / "n", data, n, 1)),
            _site_view(_client(Path(d) / "n+1", data, n + 1, 1)),
            _site_view(_client(Path(d) / "two-each", data, 2 * n, 2)),
        ]
    assert views[0] == views[1] == views[2]


def _independent_dpsgd_epsilon(p: Any) -> float:
    """The DP-SGD plan's epsilon recomputed from dp-accounting primitives, from the protocol's
    values and the plan's multiplier only (a second implementation of the accounting)."""
    t, dps = p.training, p.training.dp_sgd
    m = dpsgd.plan_dpsgd(p).noise_multiplier
    steps, b = int(t.local_steps), int(t.batch_size)
    k = int(p.clustering.k)
    if dps.amplification == "sampling" and p.privacy.neighbouring == "add-remove-one":
        step: dp_accounting.DpEvent = dp_accounting.PoissonSampledDpEvent(
            float(dps.sampling_rate), dp_accounting.GaussianDpEvent(m)
        )
        events = [step] * (steps * (t.global_rounds + k * t.finetune_rounds))
        return _eps(events, float(dps.delta), p.privacy.accountant, wor=False)
    plain = dp_accounting.GaussianDpEvent(m / 2.0)  # sensitivity 2C
    fine = [plain] * (steps * k * t.finetune_rounds)
    if dps.amplification == "sampling":  # replace-one, without replacement: the smaller bound
        # both are valid: the sampled steps (RDP, the replace-one orders) or the plain Gaussian
        # steps under the protocol's own accountant (PLD is tighter than RDP for them)
        sampled = dp_accounting.SampledWithoutReplacementDpEvent(int(dps.population), b, plain)
        n = steps * t.global_rounds
        return min(
            _eps([sampled] * n + fine, float(dps.delta), "rdp", wor=True),
            _eps([plain] * n + fine, float(dps.delta), p.privacy.accountant, wor=False),
        )
    return _eps([plain] * (steps * t.global_rounds) + fine, float(dps.delta),
                p.privacy.accountant, wor=False)  # fmt: skip


def _eps(events: list, delta: float, kind: str, *, wor: bool) -> float:
    from dp_accounting import pld

    if wor:
        acc: Any = rdp.RdpAccountant(
            orders=WOR_ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
        )
    elif kind == "rdp":
        acc = rdp.RdpAccountant()
    else:
        acc = pld.PLDAccountant()
    i = 0
    while i < len(events):  # runs of one event composed at once (PLD is slow event by event)
        j = i
        while j < len(events) and events[j] == events[i]:
            j += 1
        acc.compose(events[i], j - i)
        i = j
    return float(acc.get_epsilon(delta))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=dp_protocols())
def test_the_charged_epsilon_matches_an_independent_recomputation(data: dict) -> None:
    p = parse_protocol(data)
    if not p.training.dp_sgd.enabled:
        from securefed.training.client_dp import site_plan

        plan = site_plan(p, 10_000)
        single = dp_accounting.GaussianDpEvent(plan.noise_multiplier)
        ours = _eps([single] * plan.rounds, plan.delta, p.privacy.accountant, wor=False)
        assert ours <= plan.epsilon * (1 + 1e-3)
        assert plan.planned_epsilon() == pytest.approx(ours, rel=0.02)
        return
    plan = dpsgd.plan_dpsgd(p)
    ours = _independent_dpsgd_epsilon(p)
    assert ours <= float(p.training.dp_sgd.epsilon) * (1 + 1e-3)
    assert plan.planned_epsilon() == pytest.approx(ours, rel=0.02)


@pytest.mark.parametrize(("population", "batch"), [(4, 2), (8, 2), (20, 4), (6, 1)])
def test_a_larger_site_is_charged_no_less_than_it_spends(population: int, batch: int) -> None:
    """A site with more patients than the declared population draws from all of them (a smaller
    sampling rate) and is charged as the population: valid only if the bound of sampling
    without replacement grows with the rate, which this checks on the accountant itself."""
    sigma = 1.5
    acc_eps = []
    for n in (population, population + 1, 2 * population, 10 * population):
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.SampledWithoutReplacementDpEvent(
            n, batch, dp_accounting.GaussianDpEvent(sigma)), 50)  # fmt: skip
        acc = rdp.RdpAccountant(
            orders=WOR_ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
        )
        acc.compose(event)
        acc_eps.append(acc.get_epsilon(1e-6))
    assert acc_eps == sorted(acc_eps, reverse=True)


def test_a_short_site_runs_every_planned_step_and_divides_by_the_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site with fewer patients than a batch still runs ``local_steps`` steps (padded slots:
    noise-only shares) and Opacus divides by the public batch size, never by ``min(b, n)``."""
    from securefed.models import build_model
    from securefed.training import local

    text = tomli_w.dumps({
        "schema_version": 1, "study": {"name": "short", "mode": "simulation"},
        "privacy": {"total_epsilon": math.inf},
        "clustering": {"k": 2, "k_selection": "fixed", "k_min": 2, "k_max": 2},
        "training": {"model": "dp-unet", "batch_size": 4, "crop_size": [16, 16, 16],
                     "global_rounds": 1, "finetune_rounds": 0, "local_steps": 3,
                     "aggregation": "fedavg",
                     "dp_sgd": {"enabled": True, "epsilon": 4.0, "population": 10}},
        "evaluation": {"roi_size": [16, 16, 16]},
    })  # fmt: skip
    seen: list[tuple[int, float]] = []

    def fake_train(model, data, spec, *, optimizer, batches, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append((len(batches), float(optimizer.expected_batch_size)))
        return {"steps": len(batches), "loss": 0.0}

    monkeypatch.setattr(local, "train_local", fake_train)
    from support.dpsgd import dp_case

    (tmp_path / "p.toml").write_text(text)
    from securefed.protocol import load_protocol

    loaded = load_protocol(tmp_path / "p.toml")
    spec = loaded.protocol.training
    plan = dpsgd.plan_dpsgd(loaded.protocol)
    for n in (1, 2, 7):
        data = local.prepare_volumes([dp_case(f"c{i}") for i in range(n)], spec)
        ledger = dpsgd.site_ledger(loaded, 1, tmp_path / f"ledger-{n}")
        dpsgd.train_dp_round(build_model(spec), data, spec, plan=plan, ledger=ledger,
                             release_id="r", lr=0.05)  # fmt: skip
    assert seen == [(3, 4.0)] * 3
    batches = dpsgd.dp_batches(2, 4, 500, seed=1, population=10)
    assert all(len(b) <= 2 for b in batches)
    assert any(not b for b in batches)
