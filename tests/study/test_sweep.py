"""`securefed sweep`: the grid expands to valid protocols (the schema's refusals become skipped
points), a tiny federation sweep writes sweep.csv, sweep.json and report.html with every plot,
shares the feature cache between points and resumes point by point."""

from __future__ import annotations

import csv
import json
import math
import tomllib
from pathlib import Path

import pytest
import tomli_w
from support.browser import images, inked_rows, render, require_chromium
from support.study import tiny_local_dp_protocol
from typer.testing import CliRunner

from securefed.cli import app
from securefed.errors import ConfigError, ProtocolError
from securefed.protocol import parse_protocol
from securefed.sweep import DEFAULT_GRID, GridSpec, Point, expand, load_grid, point_protocol
from securefed.sweep.collect import COLUMNS
from securefed.sweep.report import pareto_front

DEMO_LOCAL_DP = Path(__file__).resolve().parents[2] / "protocols" / "demo-local-dp.toml"


def test_default_grid_and_point_protocols() -> None:
    points = expand(DEFAULT_GRID)
    assert [p.id for p in points] == [
        "plain_none_secagg+", "plain_dp-sgd-e8_secagg+", "local-dp-e4_none_secagg+",
        "local-dp-e4_dp-sgd-e8_secagg+",
    ]  # fmt: skip
    base = tomllib.loads(DEMO_LOCAL_DP.read_text())
    data = point_protocol(base, points[3])
    p = parse_protocol(data)
    assert p.release.mode == "local-dp"
    assert p.release.epsilon == 4.0
    assert p.training.dp_sgd.enabled
    assert p.training.dp_sgd.epsilon == 8.0
    assert p.privacy.total_epsilon == pytest.approx(12.0)  # the sum of the allocations
    plain = parse_protocol(point_protocol(base, points[0]))
    assert plain.release.mode == "plain"
    assert math.isinf(plain.privacy.total_epsilon)
    # A combination the schema refuses names the schema's reason.
    with pytest.raises(ProtocolError, match="secagg"):
        point_protocol(base, Point("plain", None, "client-dp", 8.0, "fedavg"))
    no_bounds = tomllib.loads((DEMO_LOCAL_DP.parent / "demo.toml").read_text())
    with pytest.raises(ProtocolError, match="no release.bounds"):
        point_protocol(no_bounds, points[2])
    # Secure-aggregate points keep the base protocol's fixed projection (the secure clustering
    # needs one): the random projection of demo-local-dp, the subset of demo-secure-aggregate.
    secure = Point("secure-aggregate", 0.5, "none", None, "secagg+")
    sa = parse_protocol(point_protocol(base, secure))
    assert sa.release.mode == "secure-aggregate"
    assert sa.release.projection == "random"
    assert sa.release.dimension == 8
    assert sa.clustering.secure.epsilon == 0.5
    subset_base = tomllib.loads((DEMO_LOCAL_DP.parent / "demo-secure-aggregate.toml").read_text())
    sub = parse_protocol(point_protocol(subset_base, secure))
    assert sub.release.projection == "subset"
    assert len(sub.release.subset) == 3


def test_grid_file_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\nrelease = ["plain"]\ntraining = ["dpsgd"]\n')
    with pytest.raises(ConfigError, match=r"grid\.training"):
        load_grid(path)
    path.write_text('release = ["plain"]\n')
    with pytest.raises(ConfigError, match=r"one \[grid\] table"):
        load_grid(path)
    path.write_text("[grid]\nfeature_epsilon = [0.0]\n")
    with pytest.raises(ConfigError, match="feature_epsilon"):
        load_grid(path)
    assert load_grid(None) == DEFAULT_GRID


def test_pareto_front() -> None:
    rows = [
        {"point": "a", "status": "done", "epsilon_total": 1.0, "dice_cffl": 0.2},
        {"point": "b", "status": "done", "epsilon_total": 4.0, "dice_cffl": 0.5},
        {"point": "c", "status": "done", "epsilon_total": 8.0, "dice_cffl": 0.4},
        {"point": "d", "status": "done", "epsilon_total": "inf", "dice_cffl": 0.6},
        {"point": "e", "status": "skipped"},
    ]
    assert pareto_front(rows) == ["a", "b", "d"]


def test_sweep_of_a_tiny_federation_writes_and_resumes(
    tiny_federation: Path, tmp_path: Path
) -> None:
    """One trained point (the whole study) and one the schema refuses; the outputs, the report in
    Chromium, the resume and the refusal of another grid. Plain rows and the shared feature cache:
    the clustering-only test below."""
    base = tiny_local_dp_protocol(tmp_path)
    data = tomllib.loads(base.read_text())
    data["training"]["baselines"] = ["fedavg", "cffl"]
    base.write_bytes(tomli_w.dumps(data).encode())
    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[grid]\nrelease = ["local-dp"]\nfeature_epsilon = [2.0]\n'
        'training = ["none", "client-dp"]\naggregation = ["fedavg"]\n'
    )
    out = tmp_path / "sweep"
    args = ["sweep", str(base), "--data", str(tiny_federation), "--truth",
            str(tiny_federation / "truth.csv"), "--out", str(out), "--grid", str(grid),
            "--workers", "1"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(r["point"], r["status"]) for r in rows] == [
        ("local-dp-e2_none_fedavg", "done"), ("local-dp-e2_client-dp-e8_fedavg", "skipped"),
    ]  # fmt: skip
    assert "secagg" in rows[1]["reason"]  # client-level DP needs SecAgg+: the schema says so
    ldp = rows[0]
    assert 0.0 <= ldp["dice_fedavg"] <= 1.0
    assert 0.0 <= ldp["dice_cffl"] <= 1.0
    assert ldp["dice_cffl_lo"] <= ldp["dice_cffl"] <= ldp["dice_cffl_hi"]
    assert ldp["ari_scanner"] is not None
    assert ldp["advantage_institution"] is not None
    assert ldp["per_scanner"]["cffl"]
    assert 0 < ldp["epsilon_features"] <= 2.0 + 1e-9
    assert ldp["global_reused"] is False  # the first point with its global phase trains it
    assert len(list((out / "cache" / "global").iterdir())) == 1  # and keeps it for the others
    with (out / "sweep.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == list(COLUMNS)
    assert len(table) == 2
    html = (out / "report.html").read_text()
    for name in ("dice_vs_epsilon", "ari_vs_epsilon", "attack_vs_epsilon", "pareto"):
        assert f"plots/{name}.png" in html
        assert (out / "plots" / f"{name}.png").stat().st_size
    # Resume: finished points are not run again; the outputs stay the same.
    before = (out / "sweep.csv").read_text()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.output.count("done earlier") == 1
    assert (out / "sweep.csv").read_text() == before
    # Another grid in the same folder is refused.
    grid.write_text('[grid]\nrelease = ["plain"]\ntraining = ["none"]\n')
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert "another protocol or grid" in res.output
    # Last, Debian's chromium (a visible skip without it): the page renders with every plot.
    require_chromium()
    _check_in_browser(out / "report.html", tmp_path)


def _check_in_browser(page: Path, tmp: Path) -> None:
    dom, shot = render(page, tmp / "sweep.png")
    srcs = images(dom)
    assert len(srcs) == 4 and all((page.parent / src).is_file() for src in srcs), srcs
    assert "Pareto front" in dom
    assert "<table>" in dom
    inked = inked_rows(shot)
    assert len(inked) > 600
    assert inked.max() > 900


def test_clustering_only_sweep_has_ari_and_advantage_and_no_dice(
    tiny_federation: Path, tmp_path: Path
) -> None:
    """``stop_after = "clustering"`` (large federations): features and clustering per point, the
    epsilon the ledgers recorded, no training folder, no Dice plots."""
    base = tiny_local_dp_protocol(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nrelease = ["plain", "local-dp"]\nfeature_epsilon = [2.0]\n'
                    'training = ["none"]\nstop_after = "clustering"\n')  # fmt: skip
    assert load_grid(grid).stop_after == "clustering"
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, ["sweep", str(base), "--data", str(tiny_federation), "--truth",
                                   str(tiny_federation / "truth.csv"), "--out", str(out),
                                   "--grid", str(grid), "--workers", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    plain, ldp = json.loads((out / "sweep.json").read_text())["rows"]
    for row in (plain, ldp):
        assert row["status"] == "done"
        assert row["dice_cffl"] is None
        assert row["ari_scanner"] is not None
        assert row["advantage_institution"] is not None
        assert not (out / "points" / row["point"] / "run" / "training").exists()
        assert row["global_reused"] is None
    assert plain["epsilon_total"] == "inf"
    assert plain["epsilon_features"] is None
    assert 0 < ldp["epsilon_features"] <= 2.0 + 1e-9
    assert ldp["epsilon_total"] <= 2.0 + 1e-9
    # One feature cache for every point: the second point extracted nothing again.
    assert any((out / "cache" / "radiomics").iterdir())
    assert not (out / "points" / "plain_none_secagg+" / "run" / "cache").exists()
    html = (out / "report.html").read_text()
    assert "plots/ari_vs_epsilon.png" in html
    assert "plots/dice_vs_epsilon.png" not in html
    assert not (out / "plots" / "pareto.png").exists()


def test_grid_spec_is_strict() -> None:
    with pytest.raises(ValueError):
        GridSpec.model_validate({"release": []})


def _report_rows() -> list[dict]:
    """Rows as the runner writes them: two trained points (one with DP-SGD), one skipped."""

    def row(point: Point, **values: object) -> dict:
        return {**point.to_json(), "status": "done", "reason": "", **values}

    plain = Point("plain", None, "none", None, "secagg+")
    dp = Point("local-dp", 4.0, "dp-sgd", 8.0, "secagg+")
    skipped = Point("plain", None, "client-dp", 8.0, "fedavg")
    return [
        row(plain, ari_scanner=1.0, ari_institution=0.5927, dice_fedavg=0.8132,
            dice_fedavg_lo=0.7902, dice_fedavg_hi=0.8344, dice_cffl=0.834, dice_cffl_lo=0.8017,
            dice_cffl_hi=0.8644, cffl_minus_fedavg=0.02075, cffl_minus_fedavg_lo=0.008099,
            cffl_minus_fedavg_hi=0.03339, advantage_institution=0.3778, advantage_scanner=0.7111,
            epsilon_total="inf", bytes_per_client_per_round=1.122e7, wall_s=828.2),
        row(dp, ari_scanner=-0.00756, dice_fedavg=0.01829, dice_fedavg_lo=0.01345,
            dice_fedavg_hi=0.02424, dice_cffl=0.01829, dice_cffl_lo=0.01345,
            dice_cffl_hi=0.02425, cffl_minus_fedavg=-1.447e-06, cffl_minus_fedavg_lo=-1.776e-05,
            cffl_minus_fedavg_hi=1.678e-05, advantage_institution=0.0, advantage_scanner=-0.04444,
            epsilon_features=3.608, epsilon_training=5.489, epsilon_total=6.904,
            bytes_per_client_per_round=9.529e6, wall_s=1011.0),
        {**skipped.to_json(), "status": "skipped", "reason": "client-level DP needs secagg+"},
    ]  # fmt: skip


def test_report_table_is_in_words_marks_dp_training_and_renders(tmp_path: Path) -> None:
    """The point table names each point's release, training and aggregation in words, marks the
    DP-SGD point, prints no number in scientific notation and gives Dice its interval."""
    import re

    from securefed.sweep.report import point_words, write_outputs

    rows = _report_rows()
    assert point_words(rows[1]) == {"features": "local DP, \u03b5 = 4",
                                    "training": "DP-SGD, \u03b5 = 8",
                                    "aggregation": "SecAgg+"}  # fmt: skip
    write_outputs(tmp_path, rows, {"base_protocol": "sha256:" + "0" * 64})
    html = (tmp_path / "report.html").read_text()
    table = html[html.index("<h2>Grid points</h2>") :]
    body = re.sub(r'title="[^"]*"', "", table)  # the raw ids only in the rows' tooltips
    assert "local-dp-e4_dp-sgd-e8_secagg+" not in body
    assert "dice_cffl" not in body
    assert not re.search(r"\d[eE][+-]?\d", body), "scientific notation in the table"
    assert "<th>Dice CFFL</th>" in table
    assert "<th>status</th>" in table
    assert '<tr class="dp" title="local-dp-e4_dp-sgd-e8_secagg+">' in table
    # the legend, the DP-SGD row and the skipped client-DP row
    assert table.count('<span class="badge">DP</span>') == 3
    assert '0.834<span class="ci">[0.802, 0.864]</span>' in table
    assert '+0.021<span class="ci">[+0.008, +0.033]</span>' in table
    assert '0.000<span class="ci">[0.000, 0.000]</span>' in table  # -1.4e-06: no "-0.000"
    assert ">11.2 MB<" in table
    assert ">13.8 min<" in table
    assert ">6.90<" in table
    assert "features 3.61, training 5.49" in table
    assert "plain (no DP) / client-level DP, \u03b5 = 8 / FedAvg (plain sums)" in table  # skipped
    require_chromium()
    _check_in_browser(tmp_path / "report.html", tmp_path)
