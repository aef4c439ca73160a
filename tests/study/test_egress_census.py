"""`securefed audit egress`: the census of everything each site sent (its egress log) against
what the protocol declares, and the differential check on neighbouring data. A local-dp study
passes both; the data-derived release id of earlier versions and clear training side channels
(a train count as FedAvg weight, a train loss) are findings (exit 4)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from support.study import copy_run
from typer.testing import CliRunner

import securefed.site.release as release_module
from securefed.audit.egress import SECAGG_RECORD, census, run_egress_audit
from securefed.cli import app
from securefed.protocol import load_protocol
from securefed.trust.egress_log import EgressLog, read_egress_log


@pytest.mark.slow
def test_local_dp_study_passes_the_census_and_the_differential_check(
    dp_rundir: Path, tmp_path: Path
) -> None:
    dp_rundir = copy_run(dp_rundir, tmp_path)  # the audit writes RUNDIR/audit
    res = CliRunner().invoke(app, ["audit", "egress", str(dp_rundir), "--differential"])
    assert res.exit_code == 0, res.output
    doc = json.loads((dp_rundir / "audit" / "egress.json").read_text())
    assert doc["findings"] == []
    assert doc["claims_finite_epsilon"] is True
    values = [r for r in doc["fields"] if r["field"] == "values"]
    assert values
    assert all(r["protection"] == "dp" and r["epsilon"] == 4.0 for r in values)
    diff = doc["differential"]
    assert diff["applies"]
    assert set(diff["sites"]) >= {"site-1", "site-2"}
    for site in diff["sites"].values():
        assert "release.release_id" not in site["deterministic_in_data"]
    assert (dp_rundir / "audit" / "egress.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_data_derived_release_id_is_a_finding(dp_rundir: Path, tmp_path: Path, monkeypatch):
    """The release id of earlier versions: SHA-256 over the site's unclipped feature matrix."""
    dp_rundir = copy_run(dp_rundir, tmp_path)  # the audit writes RUNDIR/audit
    seen = {}
    own_rows = release_module._own_rows

    def capture(table, *args):  # noqa: ANN001, ANN202
        rows = own_rows(table, *args)
        seen["digest"] = hashlib.sha256(rows.values.tobytes()).hexdigest()[:32]
        return rows

    monkeypatch.setattr(release_module, "_own_rows", capture)
    monkeypatch.setattr(release_module, "new_release_id", lambda stage: f"{stage}-{seen['digest']}")
    doc = run_egress_audit(dp_rundir, differential=True)
    leaks = {(f["field"], f["stage"]) for f in doc["findings"]}
    assert ("release.release_id", "features") in leaks
    assert "deterministic in the data" in doc["findings"][0]["finding"]


def _leaky_site(rundir: Path, tmp: Path, fields: list[dict]) -> Path:
    """A copy of the run whose site-1 sent one training reply with ``fields``."""
    copy = tmp / "leaky"
    (copy / "sites" / "site-1").mkdir(parents=True)
    shutil.copy(rundir / "protocol.toml", copy / "protocol.toml")
    for extra in rundir.glob("*.json"):
        shutil.copy(extra, copy / extra.name)  # pinned bounds travel with the protocol
    loaded = load_protocol(copy / "protocol.toml")
    EgressLog(copy / "sites" / "site-1", "site-1", loaded.sha256).record(
        "flower-reply", "training/global/train", "server", fields
    )
    return copy


def test_clear_training_side_channels_are_findings(dp_rundir: Path, tmp_path: Path) -> None:
    leaky = _leaky_site(dp_rundir, tmp_path, [
        {"name": "group", "type": "str", "value": "1"},
        {"name": "fitres.parameters.0", "type": "array[float32]", "digest": "sha256:x"},
        {"name": "fitres.num_examples.num_examples", "type": "int", "value": 3},
        {"name": "fitres.metrics.loss", "type": "float", "value": 0.61},
    ])  # fmt: skip
    res = CliRunner().invoke(app, ["audit", "egress", str(leaky)])
    assert res.exit_code == 4, res.output
    found = {f["field"]: f["finding"] for f in
             json.loads((leaky / "audit" / "egress.json").read_text())["findings"]}  # fmt: skip
    assert "where the protocol declares 1" in found["fitres.num_examples.num_examples"]
    assert found["fitres.metrics.loss"] == "undeclared field"
    assert "in clear under a protocol that claims a finite epsilon" in found["fitres.parameters.0"]


def test_the_census_declares_every_field_a_real_site_sent(dp_rundir: Path) -> None:
    logs = {p.parent.name: read_egress_log(p) for p in (dp_rundir / "sites").glob("*/egress.jsonl")}
    assert logs
    assert all(logs.values())
    doc = census(logs, load_protocol(dp_rundir / "protocol.toml"))
    assert doc["findings"] == []
    assert not [r for r in doc["fields"] if r["protection"] == "undeclared"]


def test_the_secagg_record_name_is_flowers() -> None:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    assert SECAGG_RECORD == RECORD_KEY_CONFIGS


def test_bfv_ciphertexts_and_the_decoded_average_are_declared(
    dp_rundir: Path, tmp_path: Path
) -> None:
    """Under bfv the model leaves as a ciphertext and the decryptor sends the decoded average:
    both secure-aggregate; the same ciphertext field under secagg+ would be a clear update."""
    import tomllib

    import tomli_w

    from securefed.audit.egress import HE_MEAN
    from securefed.federation import he_round

    assert HE_MEAN == he_round.HE_MEAN
    data = tomllib.loads((dp_rundir / "protocol.toml").read_text())
    data["training"]["aggregation"] = "bfv"
    path = tmp_path / "protocol.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    for extra in dp_rundir.glob("*.json"):
        shutil.copy(extra, tmp_path / extra.name)  # pinned bounds travel with the protocol
    fields = [
        {"name": "group", "type": "str", "value": "1"},
        {"name": "fitres.parameters.0", "type": "array[uint8]", "digest": "sha256:x"},
        {"name": "fitres.num_examples.num_examples", "type": "int", "value": 1},
    ]
    mean = [{"name": "group", "type": "str", "value": "decrypt-1"},
            {"name": f"{HE_MEAN}.0", "type": "array[float32]", "digest": "sha256:y"}]  # fmt: skip

    def entries(loaded):  # noqa: ANN001, ANN202
        return [{"kind": "flower-reply", "stage": "training/global/train", "fields": f,
                 "protocol": loaded.sha256} for f in (fields, mean)]  # fmt: skip

    loaded = load_protocol(path)
    bfv = census({"site-1": entries(loaded)}, loaded)
    assert bfv["findings"] == []
    by = {r["field"]: r["protection"] for r in bfv["fields"]}
    assert by["fitres.parameters.0"] == by[f"{HE_MEAN}.0"] == "secure-aggregate"
    plain = load_protocol(dp_rundir / "protocol.toml")
    secagg = census({"site-1": entries(plain)}, plain)
    found = {f["field"]: f["finding"] for f in secagg["findings"]}
    assert "in clear" in found["fitres.parameters.0"]
    assert f"{HE_MEAN}.0" in found
