"""`securefed audit dp`: every mechanism is audited through the code a site runs and passes at its
claim; a mechanism with half its noise (a 2x violation) is caught, also when the under-noising
sits in the site's own function (the audit reads the plan, it does not recompute it); a claim
above what the run can certify is inconclusive; RUNDIR mode audits the run's protocol; the float
Laplace sampler securefed used before its discrete samplers is caught by Mironov's distinguisher;
the CLI writes dp.json and exits 4 on a finding.

OpenDP's samplers cannot be seeded: each check on them either holds for every draw or fails for a
correct sampler with a probability stated beside it (at most about 1e-9)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.stats import seeded_bytes
from typer.testing import CliRunner

from securefed.audit import dp as dp_module
from securefed.audit.dp import (
    audit_mechanism,
    claim_protocol,
    clopper_pearson,
    protocol_mechanisms,
    run_dp_audit,
)
from securefed.audit.float_distinguisher import float_laplace_impossible, grid_impossible
from securefed.cli import app
from securefed.privacy import noise as noise_module
from securefed.privacy.noise import SecureNoise
from securefed.protocol import load_protocol, pinned_files
from securefed.protocol.shipped import shipped_protocol

SAMPLED = ("feature-gaussian", "feature-laplace", "clustering-shares")
ONE_RUN = ("dp-sgd", "dp-sgd-discrete")
SMALL_DIM = 4096  # client-dp on a small model: the same plan and encode_update code, faster


def _rundir(tmp_path: Path, name: str) -> Path:
    """A run folder holding only the shipped protocol ``name`` and the files it pins."""
    src = shipped_protocol(name)
    run = tmp_path / name
    run.mkdir()
    shutil.copyfile(src, run / "protocol.toml")
    for _, pinned in pinned_files(load_protocol(src).protocol):
        shutil.copyfile(src.parent / pinned.file, run / pinned.file)
    return run


def _status(doc: dict) -> dict[str, str]:
    return {r["mechanism"]: r["status"] for r in doc["mechanisms"]}


@pytest.mark.slow  # 50,000 outputs per sampled mechanism and two one-run audits (30 s)
def test_shipped_mechanisms_pass_at_their_claim(tmp_path: Path) -> None:
    # At confidence 1 - 1e-10 a correct mechanism is flagged by the threshold bound or the
    # noise check with probability <= 2e-10 each (the threshold is fixed before sampling). The
    # one-run DP-SGD bounds keep the paper's 95 % level (securefed.audit.one_run): by its theorem
    # they could exceed the claim by chance with probability <= 5 % each; at these sizes they
    # sit far below it (docs/auditing.md).
    doc = run_dp_audit(tmp_path, mechanisms=(*SAMPLED, *ONE_RUN), trials=50_000, canaries=1000,
                       confidence=1 - 1e-10)  # fmt: skip
    names = [r["mechanism"] for r in doc["mechanisms"]]
    assert names == [*SAMPLED, *ONE_RUN]
    for row in doc["mechanisms"]:
        assert row["status"] in ("ok", "inconclusive") and not row["finding"], row
        assert row["lower_bound"] <= row["claimed_epsilon"] < row["max_certifiable"], row
        assert row["noise_check"]["epsilon_implied"] <= row["claimed_epsilon"], row
        assert row["code_path"], row
        if row["mechanism"] not in ONE_RUN:  # no replayable sampler (torch floats, lattice)
            assert row["float_distinguisher"]["impossible_fraction"] == 0.0
    assert doc["findings"] == []
    assert [r["one_run"]["noise"] for r in doc["mechanisms"][3:5]] == ["float", "discrete-gaussian"]
    assert all("client-dp" not in n["mechanism"] for n in doc["not_audited"])  # audited now
    assert (tmp_path / "dp.png").stat().st_size > 1000


@pytest.mark.slow  # the protocol's 1.19 M-value model: 16 rounds through encode_update (25 s)
def test_client_dp_of_the_shipped_protocol_passes_through_its_model(tmp_path: Path) -> None:
    run = _rundir(tmp_path, "demo-clientdp")
    doc = run_dp_audit(run / "audit", protocol=load_protocol(run / "protocol.toml"),
                       mechanisms=("client-dp",), quick=True, confidence=1 - 1e-10)  # fmt: skip
    (row,) = doc["mechanisms"]
    assert row["status"] != "finding" and "16 round(s)" in row["description"], row
    assert "1190345 values" in row["description"]
    assert row["noise_check"]["planned"] == pytest.approx(1.4506, rel=1e-3)  # sqrt(16) / 2.757


@pytest.mark.parametrize("name", [*SAMPLED, "client-dp"])
def test_half_the_noise_is_a_finding_for_every_sampled_mechanism(name: str) -> None:
    # Half the noise doubles the measured shift over the noise: its lower bound (20,000 outputs,
    # 99.9 %) then sits at about twice the claim's, 20 standard errors above it or more, so the
    # noise check's epsilon exceeds the claim for every draw in practice (< 1e-30).
    loaded = claim_protocol(name, 1.0, 1e-5)
    if name == "client-dp":
        mech = dp_module.client_dp(loaded, 0.5, dim=SMALL_DIM)
    else:
        mech = dp_module._build(name, loaded, 1.0, 0.5)
    row = audit_mechanism(mech, 20_000)
    assert row["status"] == "finding" and row["finding"], row
    assert row["noise_check"]["finding"]
    assert row["noise_check"]["lower"] > 1.5 * mech.shift
    # The same mechanism at its claim: no finding (the bound and the check at 99.9 %).
    calm = audit_mechanism(dp_module._build(name, loaded, 1.0, 1.0) if name != "client-dp"
                           else dp_module.client_dp(loaded, dim=SMALL_DIM), 20_000,
                           1 - 1e-10)  # fmt: skip
    assert calm["status"] != "finding", calm


def test_the_threshold_bound_catches_half_the_noise_at_a_size_that_cannot_miss() -> None:
    # A real distribution-free catch per noise family, at a size whose computed power against
    # half the noise is >= 1 - 1e-9 (dp_power's exact binomial sums): the Laplace release at its
    # default trial floor, the Gaussian release with the outputs sized for that power.
    from securefed.audit import dp_power

    lap = dp_module._build("feature-laplace", claim_protocol("feature-laplace", 1.0, 0.0), 1.0,
                           0.5)  # fmt: skip
    t, p = dp_power.best_threshold("laplace", lap.shift, 4000, 1.0, 0.0, 0.999)
    assert p > 1 - 1e-9
    row = audit_mechanism(lap, 4000, threshold=t)
    assert row["lower_bound"] > 1.0 and row["status"] == "finding", row
    gauss = dp_module._build("feature-gaussian", claim_protocol("feature-gaussian", 2.0, 1e-5),
                             2.0, 0.5)  # fmt: skip
    sized = dp_power.size_threshold_test("gaussian", gauss.shift, 2.0, 1e-5, 0.999,
                                         target=1 - 1e-9)  # fmt: skip
    assert sized.target_reached
    assert sized.trials <= 150_000
    row = audit_mechanism(gauss, sized.trials, threshold=sized.threshold)
    assert row["lower_bound"] > 2.0 and row["power_2x"] > 0.95, row


def test_dp_sgd_half_the_noise_is_caught_and_a_tenth_by_the_one_run_bound() -> None:
    # The noise check reads the canaries' moves through the plan's accounting: with half the
    # noise the measured multiplier halves (1,000 canaries measure it within 3 %), and the plan's
    # epsilon at it is far above the claim. The distribution-free one-run bound needs more: at a
    # claim of 1, 1,000 canaries catch a tenth of the noise (simulated power 1.0; the theorem's
    # 95 % level).
    loaded = claim_protocol("dp-sgd", 1.0, 1e-5)
    half = dp_module._dp_sgd_row("dp-sgd", loaded, noise_scale=0.5, canaries=1000, quick=False,
                                 confidence=0.999)  # fmt: skip
    assert half["status"] == "finding" and half["noise_check"]["finding"], half["noise_check"]
    assert half["noise_check"]["measured"] < 0.6 * half["noise_check"]["planned"]
    tenth = dp_module._dp_sgd_row("dp-sgd", loaded, noise_scale=0.1, canaries=1000, quick=False,
                                  confidence=0.999)  # fmt: skip
    assert tenth["lower_bound"] > 1.0, tenth["one_run"]
    assert tenth["one_run"]["sampling"] == "without-replacement"
    assert tenth["one_run"]["steps"] == 80  # every planned step: 8 + 8 clusters x 1 round, 5 each


@pytest.mark.slow  # the lattice optimizer over 80 steps (15 s)
def test_discrete_dp_sgd_half_the_noise_is_caught() -> None:
    loaded = claim_protocol("dp-sgd-discrete", 1.0, 1e-5)
    row = dp_module._dp_sgd_row("dp-sgd-discrete", loaded, noise_scale=0.5, canaries=1000,
                                quick=False, confidence=0.999)  # fmt: skip
    assert row["status"] == "finding" and row["one_run"]["noise"] == "discrete-gaussian", row


def test_the_audit_reads_the_sites_own_functions(monkeypatch) -> None:
    # Bugs inside the site's code path (not the audit's): each is caught because the audit asks
    # the site's functions for the noise instead of recomputing it.
    from securefed.privacy import protection
    from securefed.training import client_dp as client_dp_module

    # 1. The release's calibration returns half the sigma.
    real_sigma = protection.discrete_gaussian_sigma
    monkeypatch.setattr(protection, "discrete_gaussian_sigma",
                        lambda e, d, s: real_sigma(e, d, s) / 2)  # fmt: skip
    mech = dp_module.feature_release(load_protocol(shipped_protocol("demo-local-dp")))
    assert audit_mechanism(mech, 20_000)["status"] == "finding"
    monkeypatch.undo()

    # 2. A site's share of the clustering noise is sized for twice the honest sites.
    real_share = noise_module.distributed_discrete_gaussian_share

    def thin_share(source, sigma, n, shape, *, min_contributors=None, grid=2.0**-12):
        return real_share(source, sigma / 2, n, shape, min_contributors=min_contributors,
                          grid=grid)  # fmt: skip

    monkeypatch.setattr(noise_module, "distributed_discrete_gaussian_share", thin_share)
    mech = dp_module.clustering_shares(load_protocol(shipped_protocol("demo-secure-aggregate")))
    assert audit_mechanism(mech, 20_000)["status"] == "finding"
    monkeypatch.undo()

    # 3. Client DP at half the sensitivity (bug 2 of the issue: factor 1 instead of 2).
    real_plan = client_dp_module.plan_client_dp

    def factor_one(**kwargs):
        import dataclasses

        plan = real_plan(**kwargs)
        return dataclasses.replace(plan, sigma_units=plan.sigma_units / 2)

    monkeypatch.setattr(client_dp_module, "plan_client_dp", factor_one)
    client_dp_module._plan.cache_clear()
    try:
        mech = dp_module.client_dp(load_protocol(shipped_protocol("demo-clientdp")),
                                   dim=SMALL_DIM)  # fmt: skip
        assert audit_mechanism(mech, 20_000)["status"] == "finding"
    finally:
        client_dp_module._plan.cache_clear()


def test_summed_shares_drawn_at_once_have_the_law_of_the_shares_drawn_one_by_one() -> None:
    # The clustering's statistic from the honest shares drawn one by one (6 OpenDP draws per
    # output) and from each component's sum drawn at once: both standardised N(0, 1) at the base
    # input and shifted by the plan's mu at the neighbour (support.stats rules, p = 1e-10 each).
    from support.stats import mean_is_zero, scale_is

    loaded = load_protocol(shipped_protocol("demo-secure-aggregate"))
    for combine in (True, False):
        mech = dp_module.clustering_shares(loaded, combine=combine)
        assert mech.draws_per_trial == (2 if combine else 6)
        base, neighbour = mech.sample(0, 5000).statistic, mech.sample(1, 5000).statistic
        assert scale_is(base, 1.0)
        assert mean_is_zero(base, 1.0)
        assert scale_is(neighbour - mech.shift, 1.0)
        assert mean_is_zero(neighbour - mech.shift, 1.0)


def test_a_claim_above_what_the_run_can_certify_is_inconclusive(tmp_path: Path) -> None:
    # 2,000 outputs at 99.9 % certify at most log(2000 / 7.6) = 5.57: a claim of 8 is
    # inconclusive, never ok, and no finding (the Laplace at its claim).
    doc = run_dp_audit(tmp_path, mechanisms=("feature-laplace",), trials=2000, epsilon=8.0)
    row = doc["mechanisms"][0]
    assert row["max_certifiable"] == pytest.approx(math.log(2000 / 7.6), abs=0.01)
    assert row["status"] == "inconclusive"
    assert not row["finding"]
    assert doc["findings"] == []
    # The same run at a claim it can certify above: ok.
    doc = run_dp_audit(tmp_path, mechanisms=("feature-laplace",), trials=2000, epsilon=2.0)
    assert _status(doc) == {"feature-laplace": "ok"}
    # Quick mode says it certifies less: 20,000 outputs reach 7.88, below a claim of 8.
    doc = run_dp_audit(tmp_path, mechanisms=("feature-laplace",), quick=True, epsilon=8.0)
    row = doc["mechanisms"][0]
    assert row["quick"]
    assert row["trials"] == 20_000
    assert "quick" in doc["note"]
    assert row["status"] == "inconclusive"
    assert 7.8 < row["max_certifiable"] < 8.0


def test_rundir_mode_audits_the_protocols_mechanisms_at_its_claims(tmp_path: Path) -> None:
    expected = {
        "demo": [],
        "demo-local-dp": ["feature-gaussian"],
        "demo-secure-aggregate": ["clustering-shares"],
        "demo-dpsgd": ["feature-gaussian", "dp-sgd"],
        "demo-clientdp": ["feature-gaussian", "client-dp"],
    }
    for name, mechanisms in expected.items():
        assert protocol_mechanisms(load_protocol(shipped_protocol(name))) == mechanisms, name
    runner = CliRunner()
    run = _rundir(tmp_path, "demo-secure-aggregate")
    res = runner.invoke(app, ["audit", "dp", str(run), "--quick"])
    assert res.exit_code == 0, res.output
    doc = json.loads((run / "audit" / "dp.json").read_text())
    assert doc["mode"] == "protocol"
    assert doc["protocol"] == load_protocol(run / "protocol.toml").sha256
    (row,) = doc["mechanisms"]
    assert (row["mechanism"], row["claimed_epsilon"], row["delta"]) == ("clustering-shares", 1.0,
                                                                        1e-6)  # fmt: skip
    assert "plan_secure_clustering" in " ".join(row["code_path"])
    assert "clustering-shares: claimed epsilon 1," in res.output
    # A plain run enables no DP stage: nothing to audit, exit 0.
    plain = _rundir(tmp_path, "demo")
    res = runner.invoke(app, ["audit", "dp", str(plain), "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0
    assert json.loads((tmp_path / "plain" / "dp.json").read_text())["mechanisms"] == []
    # The claims are the protocol's: --epsilon is refused, so is a mechanism it does not enable.
    res = runner.invoke(app, ["audit", "dp", str(run), "--epsilon", "2"])
    assert res.exit_code == 2
    assert "protocol" in res.output
    res = runner.invoke(app, ["audit", "dp", str(run), "--mechanism", "dp-sgd", "--quick"])
    assert res.exit_code == 2
    assert "does not enable" in res.output


def test_float_laplace_is_caught_by_replaying_its_arithmetic(monkeypatch) -> None:
    # SecureNoise's float Laplace on seeded bytes in place of os.urandom: fixed outputs, so the
    # fraction below is a fixed number (OpenDP's discrete Laplace cannot be seeded; the check on
    # it holds for every draw).
    monkeypatch.setattr(noise_module, "_random_bytes", seeded_bytes(7))
    noise = SecureNoise()
    at_0 = 0.0 + noise.laplace(1.0, (20_000,))
    at_1 = 1.0 + noise.laplace(1.0, (20_000,))
    assert not float_laplace_impossible(at_0, 0.0, 1.0).any()  # own outputs always possible
    assert float_laplace_impossible(at_1, 0.0, 1.0).mean() > 0.5  # Mironov: most identify x=1
    grid = 4096 + noise.discrete_laplace(4096.0, (20_000,)).astype(np.float64)
    assert not grid_impossible(grid, 0).any()  # an integer-grid release has no such outputs


def test_clopper_pearson_brackets_the_rate() -> None:
    lo, hi = clopper_pearson(30, 100, 0.95)
    assert 0.21 < lo < 0.3 < hi < 0.4
    assert clopper_pearson(0, 100, 0.95)[0] == 0.0
    assert clopper_pearson(100, 100, 0.95)[1] == 1.0


def test_cli_writes_dp_json_and_exits_4_on_a_finding(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "dp", "--out", str(tmp_path / "a"), "--mechanism",
                              "feature-laplace", "--trials", "20000"])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "a" / "dp.json").read_text())
    row = doc["mechanisms"][0]
    assert set(row) >= {"mechanism", "claimed_epsilon", "delta", "lower_bound", "trials",
                        "threshold_test", "float_distinguisher", "confidence", "seconds",
                        "finding", "status", "max_certifiable", "power_2x",
                        "noise_check"}  # fmt: skip
    assert "certifiable up to" in res.output
    assert "power against half the noise" in res.output
    res = runner.invoke(app, ["audit", "dp", "--out", str(tmp_path / "b"), "--mechanism",
                              "float-laplace", "--trials", "20000"])  # fmt: skip
    assert res.exit_code == 4, res.output
    doc = json.loads((tmp_path / "b" / "dp.json").read_text())
    assert doc["mechanisms"][0]["lower_bound"] == "inf"
    assert doc["findings"] == ["float-laplace"]
    assert doc["mechanisms"][0]["status"] == "finding"
    assert math.isinf(float(doc["mechanisms"][0]["lower_bound"]))
    res = runner.invoke(app, ["audit", "dp", "--out", str(tmp_path / "c"), "--mechanism", "x"])
    assert res.exit_code == 2
    assert "choose from" in res.output
    res = runner.invoke(app, ["audit", "dp", "--mechanism", "feature-laplace"])
    assert res.exit_code == 2
    assert "--out" in res.output


def test_one_run_bound_follows_the_papers_theorem() -> None:
    from scipy.stats import binom

    from securefed.audit.one_run import one_run_epsilon, one_run_p_value

    # All 400 guesses right among 2000 canaries rejects epsilon 4 but not epsilon 6.
    assert (
        one_run_p_value(2000, 400, 400, 4.0, 0.0) < 0.05 < one_run_p_value(2000, 400, 400, 6.0, 0.0)
    )
    # Half right is chance: no epsilon above 0 is rejected.
    assert one_run_epsilon(2000, 400, 200, 1e-5) == 0.0
    # The delta term only adds to the p-value: a larger delta never gives a larger bound.
    assert one_run_epsilon(2000, 400, 300, 1e-3) <= one_run_epsilon(2000, 400, 300, 0.0)
    # The vectorised alpha term equals the theorem's sum written out.
    m, r, v, eps, delta = 2000, 60, 50, 1.5, 1e-4
    q = 1 / (1 + math.exp(-eps))
    alpha = max(sum(binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i for i in range(1, v + 1))
    expected = min(1.0, float(binom.sf(v - 1, r, q)) + 2 * m * delta * alpha)
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-12)
