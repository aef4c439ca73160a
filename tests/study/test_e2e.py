"""End to end on CPU: a tiny synthetic federation through every stage of `securefed run`
(extraction, sealed release, collection, clustering with the sealed model exchange, Flower
FedAvg + CFFL under SecAgg+, evaluation, report), then a resume that redoes nothing. The whole
study is run once per session (tests/study/conftest.py, ``whole_study``); the tests here read it,
and the audits and the resume work on copies of its run folder."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.browser import images, inked_rows, render, require_chromium
from support.study import TINY, FinishedStudy, copy_run, reference_bounds, tiny_protocol
from typer.testing import CliRunner

from securefed.cli import app


def test_the_whole_study_writes_every_output(whole_study: FinishedStudy) -> None:
    """Institution 3 is held out: it trains nothing and is scored apart as unseen."""
    rundir = whole_study.rundir
    for name in ("protocol.toml", "clusters.csv", "results.json", "report.html",
                 "evaluation/per_case.csv", "training/phases.json"):  # fmt: skip
        assert (rundir / name).is_file(), name
    # The run played the board: a governance signature and each site's own configuration, checked
    # before every site-side stage.
    assert (rundir / "protocol.toml.sig").is_file()
    assert (rundir / "sites" / "site-1" / "site.toml").is_file()
    assert "3 site(s) accepted sha256:" in " ".join(whole_study.output.split())
    results = json.loads((rundir / "results.json").read_text())
    methods = results["segmentation"]["methods"]
    assert set(methods) == {
        "local",
        "local-finetune",
        "fedavg",
        "cffl",
        "cffl-ideal",
        "centralized",
    }
    assert not methods["centralized"]["private"]
    assert not methods["cffl-ideal"]["private"]
    assert methods["fedavg"]["private"]
    assert methods["local"]["private"]
    for res in methods.values():
        assert res["n_cases"] > 0
        assert all(0.0 <= res["mean"][r] <= 1.0 for r in ("TC", "WT", "ET"))
    assert results["clustering"]["k"] == 2
    assert "ari_scanner" in results["clustering"]["quality"]
    overlays = results["segmentation"]["overlays"]
    assert overlays
    assert all((rundir / o["plot"]).is_file() for o in overlays)


def test_the_held_out_institution_is_scored_apart_and_sends_nothing(
    whole_study: FinishedStudy,
) -> None:
    rundir = whole_study.rundir
    results = json.loads((rundir / "results.json").read_text())
    methods = results["segmentation"]["methods"]
    # The unseen institution: all 5 of its cases routed by radiomics and scored apart.
    unseen = results["segmentation"]["unseen"]
    assert unseen["fedavg"]["n_cases"] == 5
    assert unseen["cffl"]["n_cases"] == 5
    roles = {s["site"]: s["role"] for s in results["data"]["sites"]}
    assert roles == {"site-1": "training", "site-2": "training", "site-3": "unseen"}
    for method in ("local", "fedavg", "cffl"):
        assert "site-3" not in methods[method]["per_site"]
    # Training sites released through the sealed channel; the unseen one sent nothing.
    assert sorted(p.name for p in (rundir / "server" / "inbox").glob("*.env")) == [
        "site-1.features.env", "site-2.features.env"]  # fmt: skip
    # The server holds the collected table (training sites' cases only).
    collected = (rundir / "server" / "features" / "features.csv").read_text().splitlines()
    assert len(collected) == 1 + 10
    clusters = (rundir / "clusters.csv").read_text().splitlines()
    assert clusters[0] == "subject_id,partition_id,split,cluster"
    assert len(clusters) == 16


def test_the_egress_census_of_the_whole_study(whole_study: FinishedStudy, tmp_path: Path) -> None:
    """Every field every site sent (features envelope, each Flower reply) has a declaration; a
    plain protocol claims no finite epsilon, so its clear values are allowed."""
    rundir = copy_run(whole_study.rundir, tmp_path)  # the audit writes RUNDIR/audit
    audit = CliRunner().invoke(app, ["audit", "egress", str(rundir)])
    assert audit.exit_code == 0, audit.output
    census = json.loads((rundir / "audit" / "egress.json").read_text())
    stages = {r["stage"] for r in census["fields"]}
    assert "features" in stages
    assert any(s.startswith("training/global/") for s in stages)
    assert any(s.startswith("training/cluster-") for s in stages)
    kinds = {r["protection"] for r in census["fields"]}
    assert "undeclared" not in kinds
    assert "secure-aggregate" in kinds
    assert "clear" in kinds


def test_membership_audits_of_the_whole_study(whole_study: FinishedStudy, tmp_path: Path) -> None:
    """Membership inference on the trained models (tiny: 2 reference models of 2 steps) and on
    one site's update (plain FedAvg vs the SecAgg+ aggregate)."""
    rundir = copy_run(whole_study.rundir, tmp_path)  # the audit writes RUNDIR/audit
    data = whole_study.data
    audit = CliRunner().invoke(app, ["audit", "models", str(rundir), "--data", str(data),
                                     "--truth", str(data / "truth.csv"), "--references",
                                     "2", "--reference-steps", "2"])  # fmt: skip
    assert audit.exit_code == 0, audit.output
    models = json.loads((rundir / "audit" / "models.json").read_text())
    kinds = {(a["attack"], a["target"], a["model"]) for a in models["attacks"]}
    assert kinds == {("membership", t, m) for t in ("fedavg", "cffl")
                     for m in ("loss-threshold", "reference")} | {
        (a, t, m) for m in ("initial", "global")
        for a, t in (("update-membership", "plain-update"),
                     ("update-membership", "secagg-aggregate"),
                     ("site-attribution", "plain-update"))}  # fmt: skip
    for a in models["attacks"]:
        assert a["ci"][0] <= a["ci"][1]
        assert 0.0 <= a["value"] <= 1.0
        assert a["metric"] in ("auc", "tpr@0.01fpr", "tpr@0.001fpr", "accuracy")
    assert models["members"] > 0
    assert models["non_members"] > 0
    assert models["by_scanner"]


def test_a_resumed_whole_study_recomputes_nothing(
    whole_study: FinishedStudy, tmp_path: Path
) -> None:
    """Resume (in a copy of the run folder): every stage but the report is skipped."""
    rundir = copy_run(whole_study.rundir, tmp_path)
    before = (rundir / "training" / "phases.json").stat().st_mtime_ns
    kept = (whole_study.rundir / "training" / "phases.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, whole_study.args(rundir))
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output
    assert (rundir / "training" / "phases.json").stat().st_mtime_ns == before
    # The copy is a run of its own: the session's run folder was not touched.
    assert (whole_study.rundir / "training" / "phases.json").stat().st_mtime_ns == kept


def test_the_whole_study_report_renders(whole_study: FinishedStudy, tmp_path: Path) -> None:
    """The report as a person sees it (a visible skip without Debian's chromium): every plot
    loads, text all the way down."""
    require_chromium()
    dom, shot = render(whole_study.rundir / "report.html", tmp_path / "report.png", height=4000)
    srcs = images(dom)
    assert len(srcs) >= 3
    assert all(src.startswith("data:image/png;base64,") for src in srcs)
    assert "<table" in dom
    assert "Dice per scanner group" in dom
    assert "Test cases: truth and predictions" in dom  # a synthetic run shows slices
    assert inked_rows(shot).max() > 2000


def test_run_refuses_other_protocol_in_same_rundir(tiny_federation: Path, tmp_path: Path) -> None:
    protocol = tiny_protocol(tmp_path)
    rundir = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(
        app, ["run", str(protocol), "--data", str(tiny_federation), "--out", str(rundir),
              "--stop-after", "features", "--workers", "1"],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    (tmp_path / "other").mkdir()
    other = tiny_protocol(tmp_path / "other", aggregation="fedavg")
    second = runner.invoke(
        app, ["run", str(other), "--data", str(tiny_federation), "--out", str(rundir)]
    )
    assert second.exit_code == 2
    assert "holds a run of protocol" in second.output


@pytest.mark.slow
def test_secure_aggregate_clustering_through_the_study(
    tiny_federation: Path, tmp_path: Path
) -> None:
    """release.mode = secure-aggregate, the whole study: no per-case vector reaches the server;
    the clustering rounds are charged to every site's ledger; sites assign their own cases; in
    training (a protocol that claims a finite epsilon) the sites send weight 1 and no validation
    metric, and every site joins every cluster's federation (securefed.protocol.egress)."""
    from securefed.privacy import read_ledger

    # Bounds from a REFERENCE federation (another seed), never from the study's data.
    sha = reference_bounds(tmp_path)
    path = tiny_protocol(tmp_path, baselines=("fedavg", "cffl"))
    data = tomllib.loads(path.read_text())
    data["release"] = {
        "mode": "secure-aggregate",
        "bounds": {"file": "bounds.json", "sha256": sha},
        "projection": "subset",
        "subset": ["flair_firstorder_Mean", "t1_glcm_Contrast", "t2_firstorder_Entropy"],
    }
    data["clustering"]["secure"] = {"epsilon": 1.0, "delta": 1e-6, "min_sites_per_aggregate": 2}
    path.write_bytes(tomli_w.dumps(data).encode())
    rundir = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", str(path), "--data", str(tiny_federation), "--out", str(rundir),
              "--workers", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # Nothing per-case was released or collected.
    assert not (rundir / "server" / "inbox").exists()
    assert not (rundir / "server" / "features").exists()
    clusters = (rundir / "clusters.csv").read_text().splitlines()
    assert len(clusters) == 16
    for site in ("site-1", "site-2", "site-3"):
        state = read_ledger(rundir / "sites" / site / "ledger.jsonl")
        assert state.charges, f"{site}: no clustering charge"
        assert 0 < state.spent() <= 1.0 + 1e-9
    report = json.loads((rundir / "server" / "clustering" / "clustering.json").read_text())
    assert report["secure"]["messages_received_by_server"] > 0
    # Training: what the server learned per round is the aggregate, the number of sites and
    # nothing patient-derived (no count, loss or Dice); the last round is each phase's result.
    state = json.loads((rundir / "training" / "global" / "state.json").read_text())
    for h in state["history"]:
        assert h["sites"] == []
        assert h["val"]["num_val"] == 0
        assert "train_loss" not in h
        assert h["weight_sum"] == h["num_sites"] == 3
    assert state["best_round"] == state["completed_round"] == 1
    phases = json.loads((rundir / "training" / "phases.json").read_text())
    for info in phases["clusters"].values():
        assert info["sites"] == {"1": None, "2": None, "3": None}  # every site, no count
        assert all(h["val_dice"] is None for h in info["history"])
    results = json.loads((rundir / "results.json").read_text())
    egress = {r["value"]: r for r in results["privacy"]["egress"]}
    assert egress["FedAvg weight"]["protection"] == "1 (uniform, public)"
    assert egress["cluster federation membership"]["protection"].startswith("every site")
    html = (rundir / "report.html").read_text()
    assert "What left each site" in html
    assert "No validation curve" in html
    # One accountant: each site's spend per stage, its curve in privacy/epsilon.csv and a plot.
    per_site = results["privacy"]["per_site"]
    rows = (rundir / "privacy" / "epsilon.csv").read_text().splitlines()
    assert rows[0] == "site,step,stage,release_id,epsilon"
    for site in ("site-1", "site-2", "site-3"):
        spent = read_ledger(rundir / "sites" / site / "ledger.jsonl").spent()
        assert set(per_site[site]["per_stage"]) == {"clustering"}
        mine = [r.split(",") for r in rows[1:] if r.startswith(site + ",")]
        assert mine
        assert all(r[2] == "clustering" for r in mine)
        assert float(mine[-1][4]) == pytest.approx(spent, rel=1e-5)
    assert "epsilon spent per charge" in html
    # Every party's audit log verifies: chain, a signed head per stage, spends = its ledger.
    # The simulation protocol pins no party's key: each log is checked against its party's
    # public key (without one, `audit verify` refuses: exit 2).
    keys = rundir / "keys"
    for site in ("site-1", "site-2", "site-3"):
        folder = str(rundir / "sites" / site)
        res = CliRunner().invoke(app, ["audit", "verify", folder, "--ledger", folder,
                                       "--protocol", str(rundir / "protocol.toml"),
                                       "--key", str(keys / f"{site}.pub.json")])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "training-round" in res.output
        assert "budget-spend" in res.output
    res = CliRunner().invoke(app, ["audit", "verify", str(rundir / "server"), "--key",
                                   str(keys / "server.pub.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    # The egress census: masked aggregates and SecAgg+ messages only; weights the constant 1.
    res = CliRunner().invoke(app, ["audit", "egress", str(rundir), "--differential"])
    assert res.exit_code == 0, res.output
    census = json.loads((rundir / "audit" / "egress.json").read_text())
    by = {(r["stage"], r["field"]): r["protection"] for r in census["fields"]}
    assert by[("clustering/rounds", "masked")] == "secure-aggregate"
    assert by[("training/global/train", "fitres.num_examples.num_examples")] == "public-constant"
    assert "clear" not in set(by.values())
    assert "undeclared" not in set(by.values())
    assert census["differential"]["applies"] is False


@pytest.mark.slow
def test_demo_command_synthesizes_runs_and_resumes(tmp_path: Path, monkeypatch) -> None:
    """`securefed demo` end to end: synthesizes OUT/data, runs --protocol in OUT/run-<name>,
    writes the report; a second call reuses the data and resumes. Only the synthetic preset is
    made smaller (the tiny one instead of the 45-case demo) to keep the test fast."""
    import securefed.data.synth as synth

    real = synth.synthesize
    presets: list[str] = []

    def tiny_synthesize(out, preset="demo", **kwargs):  # noqa: ANN001, ANN202
        presets.append(preset)
        return real(out, preset=TINY, seed=kwargs.get("seed", 0), on_case=kwargs.get("on_case"))

    monkeypatch.setattr(synth, "synthesize", tiny_synthesize)
    protocol = tiny_protocol(tmp_path, aggregation="fedavg")
    data = tomllib.loads(protocol.read_text())
    data["training"]["baselines"] = ["fedavg", "cffl"]
    protocol.write_bytes(tomli_w.dumps(data).encode())
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--protocol", str(protocol), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert presets == ["demo"]
    assert (out / "data" / "truth.csv").is_file()
    rundir = out / "run-tiny"
    assert (rundir / "report.html").is_file()
    assert "demo finished" in result.output
    methods = json.loads((rundir / "results.json").read_text())["segmentation"]["methods"]
    assert set(methods) == {"fedavg", "cffl"}
    assert (
        "ari_scanner" in json.loads((rundir / "results.json").read_text())["clustering"]["quality"]
    )
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert presets == ["demo"]
    assert "skipped" in again.output


def test_run_with_site_configs_refuses_an_unsigned_protocol_before_any_work(
    tiny_federation: Path, tmp_path: Path
) -> None:
    """`securefed run --site-configs DIR`: the operator's site configurations decide; an unsigned
    protocol is refused (exit 3) before any case is read; a signed one is accepted."""
    from support.trust import trusted_site_configs

    from securefed.crypto import generate_keys, write_keys

    protocol = tiny_protocol(tmp_path, baselines=("fedavg",))
    write_keys(generate_keys("server", "server"), tmp_path / "keys")
    configs = trusted_site_configs(
        tmp_path / "configs", protocol, ["site-1", "site-2", "site-3"],
        tmp_path / "keys" / "server.pub.json", max_total_epsilon=8.0,
        min_sites_per_aggregate=2, require_dp_training=False, require_version_pin=False,
        forbidden_release_modes=(), required_aggregation="any",
    )  # fmt: skip
    signature = protocol.with_name(protocol.name + ".sig")
    kept = signature.read_bytes()
    signature.unlink()
    args = ["run", str(protocol), "--data", str(tiny_federation), "--out", str(tmp_path / "run"),
            "--site-configs", str(tmp_path / "configs"), "--stop-after", "features"]  # fmt: skip
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 3
    assert "unsigned" in " ".join(refused.output.split())
    # Nothing was extracted or released; each site logged its refusal.
    assert not list((tmp_path / "run").rglob("features.csv"))
    assert not list((tmp_path / "run").rglob("*.env"))
    log = (tmp_path / "run" / "sites" / "site-1" / "audit.jsonl").read_text()
    assert '"event":"protocol-refused"' in log
    assert sorted(configs) == ["site-1", "site-2", "site-3"]
    signature.write_bytes(kept)
    import shutil

    shutil.rmtree(tmp_path / "run")
    # Signed by the board the sites trust: accepted (checked before the first stage, then the
    # run's own server key is not in the operators' allowed list: refused at sealing time).
    accepted = CliRunner().invoke(app, args)
    flat = " ".join(accepted.output.split())
    assert "3 site(s) accepted" in flat, accepted.output
    assert accepted.exit_code == 3
    assert "allowed_recipient_keys" in flat
    assert not list((tmp_path / "run" / "server").glob("inbox/*.env"))


@pytest.mark.slow
def test_bfv_study_deals_the_key_and_reports_bytes(tiny_federation: Path, tmp_path: Path) -> None:
    """`securefed run` under bfv: the decryptor deals the key sealed to the other sites, the
    server keeps parameters only, and results.json says what each site uploaded."""
    import os

    from securefed.crypto.bfv import load_aggregator_context, load_key

    protocol = tiny_protocol(tmp_path, aggregation="bfv", baselines=("fedavg", "cffl"))
    rundir = tmp_path / "run"
    args = ["run", str(protocol), "--data", str(tiny_federation), "--out", str(rundir),
            "--truth", str(tiny_federation / "truth.csv"), "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    he = rundir / "training" / "he"
    server = load_aggregator_context((he / "aggregator.ctx").read_bytes())
    assert not server._ctx.has_secret_key()
    assert not server._ctx.has_public_key()
    keys = {s: rundir / "sites" / s / "he" / "bfv.key" for s in ("site-1", "site-2", "site-3")}
    ids = {load_key(p.read_bytes()).key_id for p in keys.values()}
    assert ids == {server.key_id}  # one key, every site
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in keys.values())
    key_bytes = keys["site-1"].read_bytes()
    assert sorted(p.name for p in he.glob("*.sealed")) == ["site-2.sealed", "site-3.sealed"]
    assert key_bytes[60:260] not in (he / "site-2.sealed").read_bytes()  # sealed in transit
    results = json.loads((rundir / "results.json").read_text())
    wire = results["wire"]
    assert wire["aggregation"] == "bfv"
    assert wire["rounds_measured"] >= 3
    assert wire["decryptor_bytes_per_round"] == wire["fp32_bytes"]  # the decoded average only
    assert wire["bytes_per_client_per_round"] > wire["fp32_bytes"]
    decrypted = json.loads((rundir / "sites" / "site-1" / "he-decrypted.json").read_text())
    assert "global/1" in decrypted
    # The egress census knows the ciphertexts and the decoded average: no finding.
    res = CliRunner().invoke(app, ["audit", "egress", str(rundir)])
    assert res.exit_code == 0, res.output
