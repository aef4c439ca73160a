"""`securefed cluster` end to end on a small synthetic table (plain and secure-aggregate)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer
from test_clustering_fixtures import make_features, write_protocol, write_tables
from typer.testing import CliRunner

from securefed.cli.cluster import register

PLAIN = 'mode = "plain"'
SECURE = """mode = "secure-aggregate"
bounds = {{ file = "bounds.json", sha256 = "{bsha}" }}
projection = "file"
projection_file = {{ file = "projection.json", sha256 = "{psha}" }}"""


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep `cluster` a subcommand
        pass

    return app


def test_plain_cluster_recovers_scanners(tmp_path: Path) -> None:
    features, truth = write_tables(tmp_path / "feat", make_features(0))
    proto = write_protocol(
        tmp_path,
        PLAIN,
        'k = 4\nk_selection = "bic"\nk_min = 2\nk_max = 7\npca_components = 10\nn_init = 2',
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _app(),
        [
            "cluster",
            "--features",
            str(features),
            "--protocol",
            str(proto),
            "--out",
            str(out),
            "--truth",
            str(truth),
        ],
    )
    assert res.exit_code == 0, res.output
    q = json.loads((out / "quality.json").read_text())
    assert q["quality"]["scanner"]["ari"] > 0.9
    assert set(q["k_scores"]) == {str(k) for k in range(2, 8)}
    clusters = pd.read_csv(out / "clusters.csv")
    assert list(clusters.columns) == ["subject_id", "partition_id", "split", "cluster"]
    assert set(clusters["split"]) == {"train", "val", "test"}
    for name in ("embedding.png", "cluster_x_institution.png", "cluster_x_scanner.png"):
        assert (out / "plots" / name).stat().st_size > 0
    assert (out / "model" / "model.npz").exists()


def test_secure_aggregate_cluster_runs_with_ledgers(tmp_path: Path) -> None:
    features, truth = write_tables(tmp_path / "feat", make_features(0, scale=3))
    proto = write_protocol(
        tmp_path,
        SECURE,
        "k = 5\n[clustering.secure]\nepsilon = 2.0\niterations = 2\nbins_per_dimension = 10",
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _app(),
        [
            "cluster",
            "--features",
            str(features),
            "--protocol",
            str(proto),
            "--out",
            str(out),
            "--truth",
            str(truth),
        ],
    )
    assert res.exit_code == 0, res.output
    q = json.loads((out / "quality.json").read_text())
    assert q["secure"]["messages_received"] == 2 * 7
    assert q["quality"]["scanner"]["ari"] > 0.7
    ledgers = sorted(p.name for p in (out / "ledgers").iterdir())
    assert ledgers == [f"site-{i}" for i in range(1, 8)]


def test_missing_features_file_is_a_user_error(tmp_path: Path) -> None:
    proto = write_protocol(tmp_path, PLAIN, "k = 3")
    res = CliRunner().invoke(
        _app(),
        [
            "cluster",
            "--features",
            str(tmp_path / "nope.csv"),
            "--protocol",
            str(proto),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2
    assert "nope.csv" in res.output
