"""Extraction over cases on disk: cache hits, resume, workers, shared edges, bad cases, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from support.radiomics import write_case, write_federation
from typer.testing import CliRunner

from securefed.data import discover_cases, load_case
from securefed.errors import CaseError
from securefed.protocol.schema import RadiomicsSpec
from securefed.radiomics import case_vector, columns, extract_features, load_table

SUBJECTS = {f"FeTS2022_{i:05d}": 1 + (i % 2) for i in range(1, 5)}


@pytest.fixture(scope="module")
def fed_root(tmp_path_factory) -> Path:
    return write_federation(tmp_path_factory.mktemp("fed") / "root", SUBJECTS)


def run(root: Path, cache: Path, spec: RadiomicsSpec, subjects=None, **kw):
    cases = discover_cases(root).cases
    chosen = [cases[s] for s in (subjects or sorted(SUBJECTS))]
    splits = {s: "train" for s in SUBJECTS}
    return extract_features(
        chosen, spec, cache_dir=cache, partition_of=SUBJECTS, split_of=splits, **kw
    )


def test_values_match_the_in_memory_adapter_and_cache_hits(fed_root, tmp_path):
    spec = RadiomicsSpec()
    seen = []
    first = run(fed_root, tmp_path, spec, progress=lambda *a: seen.append(a))
    assert first.table.shape == (4, 372)
    assert first.table.columns == columns()
    assert (first.computed, first.cached) == (4, 0)
    assert [a[:3] for a in seen] == [("extract", i, 4) for i in range(1, 5)]
    vols = load_case(discover_cases(fed_root).cases["FeTS2022_00002"])
    direct = case_vector(vols.image, vols.label, vols.spacing, spec, subject_id="FeTS2022_00002")
    np.testing.assert_array_equal(first.table.values[1], direct)
    again = run(fed_root, tmp_path, spec)
    assert (again.computed, again.cached) == (0, 4)
    assert again.table == first.table
    assert len(list(tmp_path.glob("features-*.json"))) == 4
    other = run(fed_root, tmp_path, RadiomicsSpec(bin_width=0.2))  # new settings: new keys
    assert (other.computed, other.cached) == (4, 0)


def test_interrupted_run_resumes(fed_root, tmp_path):
    spec = RadiomicsSpec(mask="brain-without-tumour")
    part = run(fed_root, tmp_path, spec, subjects=["FeTS2022_00001", "FeTS2022_00003"])
    assert part.computed == 2
    (tmp_path / "features-garbage.json").write_text("{not json")  # a stray half file is ignored
    full = run(fed_root, tmp_path, spec)
    assert (full.computed, full.cached) == (2, 2)
    np.testing.assert_array_equal(full.table.values[[0, 2]], part.table.values)


def test_two_workers_give_identical_values(fed_root, tmp_path):
    spec = RadiomicsSpec()
    one = run(fed_root, tmp_path / "a", spec)
    two = run(fed_root, tmp_path / "b", spec, workers=2)
    assert two.computed == 4
    assert two.table == one.table


def test_shared_binning_scans_then_extracts(fed_root, tmp_path):
    spec = RadiomicsSpec(binning="shared")
    stages = []
    res = run(fed_root, tmp_path, spec, progress=lambda st, d, t, s: stages.append(st))
    assert stages == ["scan"] * 4 + ["extract"] * 4
    assert res.edges is not None
    assert set(res.edges) == {"flair", "t1", "t1ce", "t2"}
    vols = load_case(discover_cases(fed_root).cases["FeTS2022_00004"])
    direct = case_vector(
        vols.image, vols.label, vols.spacing, spec, subject_id="x", edges=res.edges
    )
    np.testing.assert_array_equal(res.table.values[3], direct)
    assert run(fed_root, tmp_path, spec).cached == 4
    # edges are a site statistic: a different set of cases gives different edges and keys
    sub = run(fed_root, tmp_path, spec, subjects=["FeTS2022_00001"])
    assert sub.edges != res.edges
    assert sub.computed == 1


def test_bad_case_is_excluded_by_name_or_raised(tmp_path):
    import nibabel as nib

    root = write_federation(tmp_path / "root", {"FeTS2022_00001": 1, "FeTS2022_00002": 1})
    for m in ("flair", "t1", "t1ce", "t2"):  # an all-zero case: no foreground at all
        path = root / "FeTS2022_00002" / f"FeTS2022_00002_{m}.nii.gz"
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), path)
    cases = list(discover_cases(root).cases.values())
    parts = {"FeTS2022_00001": 1, "FeTS2022_00002": 1}
    splits = dict.fromkeys(parts, "train")
    res = extract_features(
        cases,
        RadiomicsSpec(),
        cache_dir=tmp_path / "c",
        partition_of=parts,
        split_of=splits,
        on_error="exclude",
    )
    assert res.table.subject_ids == ("FeTS2022_00001",)
    assert "FeTS2022_00002" in res.excluded["FeTS2022_00002"]
    with pytest.raises(CaseError, match="case FeTS2022_00002"):
        extract_features(
            cases, RadiomicsSpec(), cache_dir=tmp_path / "c", partition_of=parts, split_of=splits
        )


PROTOCOL = """schema_version = 1
[study]
name = "t"
mode = "simulation"
[privacy]
total_epsilon = 1.0
[radiomics]
bin_width = 0.09
binning = "{binning}"
"""


def cli() -> typer.Typer:
    from securefed.cli.radiomics import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # a group, as in the real app
        pass

    register(app)
    return app


def test_cli_extract_writes_featdir_and_reuses_cache(fed_root, tmp_path):
    proto = tmp_path / "p.toml"
    proto.write_text(PROTOCOL.format(binning="per-image"))
    out = tmp_path / "feat"
    args = ["features", "extract", "--data", str(fed_root), "--protocol", str(proto)]
    args += ["--out", str(out), "--partition", "2"]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 0, res.output
    assert "computed 2, from cache 0" in res.output
    table, meta = load_table(out)
    assert table.subject_ids == ("FeTS2022_00001", "FeTS2022_00003")
    assert set(table.partition_ids) == {2}
    assert table.shape == (2, 372)
    assert meta["protocol_sha256"].startswith("sha256:")
    assert meta["partitions"] == [2]
    assert set(meta["content_keys"]) == set(table.subject_ids)
    again = CliRunner().invoke(cli(), args)
    assert "computed 0, from cache 2" in again.output
    bad = CliRunner().invoke(cli(), [*args[:-1], "9"])
    assert bad.exit_code == 2
    assert "--partition 9" in bad.output


def test_cli_reports_excluded_cases_by_name(tmp_path):
    root = write_federation(tmp_path / "root", {"FeTS2022_00001": 1, "FeTS2022_00002": 1})
    (root / "FeTS2022_00002" / "FeTS2022_00002_t2.nii.gz").write_bytes(b"\x1f\x8bnot a nifti")
    proto = tmp_path / "p.toml"
    proto.write_text(PROTOCOL.format(binning="shared"))
    out = tmp_path / "feat"
    res = CliRunner().invoke(
        cli(),
        ["features", "extract", "--data", str(root), "--protocol", str(proto), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "excluded 1 case(s)" in res.output
    assert "FeTS2022_00002" in res.output
    meta = json.loads((out / "manifest.json").read_text())
    assert list(meta["excluded"]) == ["FeTS2022_00002"]
    assert meta["bin_edges"] is not None


def test_write_case_helper_layout(tmp_path):
    folder = write_case(tmp_path, "FeTS2022_00042", 0)
    assert len(list(folder.glob("*.nii.gz"))) == 5
