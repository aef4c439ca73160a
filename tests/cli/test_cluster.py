"""`securefed cluster` end to end on a small synthetic table (plain and secure-aggregate)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer
from support.clustering import make_features, write_protocol, write_tables
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
    assert q["quality_tables"]["scanner"]["ari"] > 0.9
    assert set(q["selection"]["scores"]) == {str(k) for k in range(2, 8)}
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
    assert q["secure"]["messages_received_by_server"] == 2 * 7
    assert q["quality_tables"]["scanner"]["ari"] > 0.7
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
    assert "nope.csv" in res.output.replace("\n", "")  # a long tmp path may wrap


LOCAL_DP_RANDOM = """mode = "local-dp"
mechanism = "gaussian"
epsilon = 4.0
delta = 1e-6
bounds = {{ file = "bounds.json", sha256 = "{bsha}" }}
projection = "random"
dimension = 8
projection_seed = 3"""


def test_cluster_on_a_projected_local_dp_release_uses_the_study_fit(tmp_path: Path) -> None:
    """Regression: `securefed cluster` once read the raw-column bounds file for a release in
    projected columns (exit 2, "'proj_000' is not a column of the bounds file") while the study
    handled it. Both now call server.cluster_model.fit_cluster_model: same model."""
    import numpy as np

    from securefed.clustering.io import read_feature_table
    from securefed.clustering.model import ClusterModel
    from securefed.privacy.ledger import Ledger
    from securefed.privacy.protection import protect_features
    from securefed.protocol import load_protocol
    from securefed.radiomics.table import FeatureTable
    from securefed.server.cluster_model import fit_cluster_model

    data = make_features(0)
    proto = write_protocol(
        tmp_path, LOCAL_DP_RANDOM, 'k = 4\nk_selection = "fixed"\nscaling = "declared-bounds"'
    )
    loaded = load_protocol(proto)
    raw = FeatureTable(
        data["ids"], list(data["parts"]), list(data["splits"]), _columns(), data["matrix"]
    )
    frames = []
    for pid in sorted(set(raw.partition_ids)):
        site = f"site-{pid}"
        ledger = Ledger.for_protocol(tmp_path / "ledgers" / site, loaded, site)
        rel = protect_features(raw.partition(pid), loaded, ledger, site, unsafe_seed=1)
        df = pd.DataFrame(rel.matrix, columns=list(rel.columns))
        df.insert(0, "split", list(rel.splits))
        df.insert(0, "partition_id", pid)
        df.insert(0, "subject_id", list(rel.subject_ids))
        frames.append(df)
    collected = tmp_path / "collected"
    collected.mkdir()
    pd.concat(frames).to_csv(collected / "features.csv", index=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _app(),
        ["cluster", "--features", str(collected), "--protocol", str(proto), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    model = ClusterModel.load(out / "model")
    assert model.columns == [f"proj_{i:03d}" for i in range(8)]
    expected = fit_cluster_model(read_feature_table(collected), loaded).model
    for name in ("scale_low", "scale_high", "means"):
        np.testing.assert_allclose(getattr(model, name), getattr(expected, name))


def _columns() -> list[str]:
    from support.clustering import columns

    return columns()
