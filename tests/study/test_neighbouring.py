"""A differential test on neighbouring data (privacy-claims issue, permanent test): replace one
patient's images and run the study up to clustering under a local-dp protocol with seeded noise
(so the noise draws are the same in every run). What the server holds changes in that patient's
row only; everything else it received is byte for byte the same. The identifiers that travel
with the release are random: they differ between two runs on the very same data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from support.study import tiny_local_dp_protocol
from typer.testing import CliRunner

from securefed.cli import app
from securefed.clustering.assignments import read_assignments
from securefed.clustering.io import read_feature_table
from securefed.clustering.model import ClusterModel
from securefed.privacy.ledger import read_ledger


def _protocol(tmp: Path) -> Path:
    return tiny_local_dp_protocol(tmp, seeded=True)  # identical noise draws in every run


def _run(protocol: Path, data: Path, rundir: Path) -> dict[str, list[str]]:
    res = CliRunner().invoke(
        app, ["run", str(protocol), "--data", str(data), "--out", str(rundir),
              "--stop-after", "clustering", "--workers", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with (rundir / "server" / "features" / "features.csv").open() as fh:
        return {row[0]: row[1:] for row in csv.reader(fh)}


@pytest.mark.slow
def test_one_patient_replaced_changes_only_that_patients_row(
    tiny_federation: Path, tmp_path: Path
) -> None:
    protocol = _protocol(tmp_path)
    neighbour = tmp_path / "neighbour"
    shutil.copytree(tiny_federation, neighbour)
    folders = sorted(p for p in neighbour.iterdir() if p.is_dir())
    case, other = folders[0], folders[-1]
    for src in other.glob("*.nii.gz"):  # this patient's images replaced by another patient's
        suffix = src.name.removeprefix(other.name)
        shutil.copyfile(src, case / f"{case.name}{suffix}")

    a = _run(protocol, tiny_federation, tmp_path / "a")
    b = _run(protocol, tiny_federation, tmp_path / "b")
    c = _run(protocol, neighbour, tmp_path / "c")
    assert a == b  # same data, same seeded noise: the same release
    assert set(a) == set(c)
    differing = sorted(sid for sid in a if a[sid] != c[sid])
    assert differing == [case.name], differing
    manifests = [
        json.loads((tmp_path / r / "server" / "features" / "manifest.json").read_text())
        for r in "ac"
    ]
    for m in manifests:
        m.pop("features_sha256")
    assert manifests[0] == manifests[1]  # senders, counts, epsilons: nothing else moved
    # The release ids that travel in the sealed metadata are random, not derived from the data.
    ids = [
        set(read_ledger(tmp_path / r / "sites" / "site-1" / "ledger.jsonl").charges) for r in "ab"
    ]
    assert ids[0].isdisjoint(ids[1])
    # The sites assigned their cases on what they released (securefed.protocol.egress): the
    # clusters they will train in are exactly what the server computes from its own copy.
    server = read_feature_table(tmp_path / "c" / "server" / "features")
    model = ClusterModel.load(tmp_path / "c" / "server" / "clustering" / "model")
    from_release = dict(zip(server.subject_ids, model.assign(server.values).tolist(), strict=True))
    rows = read_assignments(tmp_path / "c" / "clusters.csv")
    assert {r.subject_id: r.cluster for r in rows} == from_release
