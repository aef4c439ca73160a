"""`training.validation_every`: a plain protocol's phase validates every N rounds and in its last
round; the best round is chosen among the validated ones (the others keep no metric)."""

from __future__ import annotations

from pathlib import Path

from support.flower import make_task, write_assignments, write_protocol

from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.protocol import load_protocol

LAYOUT = {
    1: [("train", 0)] * 3 + [("val", 0)] * 2,
    2: [("train", 0)] * 2 + [("val", 0)],
}


def test_a_phase_validates_every_n_rounds_and_its_last(tmp_path: Path) -> None:
    proto = write_protocol(tmp_path, rounds=5, aggregation="fedavg", min_sites=1)
    proto.write_text(proto.read_text().replace("local_steps = 3", "local_steps = 3\n"
                                               "validation_every = 2"))  # fmt: skip
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(proto),
                          assignments=str(asg), work_dir=str(tmp_path / f"s{p}"))
             for p in LAYOUT]  # fmt: skip
    loaded = load_protocol(proto)
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites={1: 3, 2: 2}, assignments=asg)
    assert cfg.validate and cfg.validate_every == 2
    result = run_phase(cfg, sites, task=make_task())
    validated = [h["round"] for h in result.history if h["val"]["num_val"] > 0]
    assert validated == [2, 4, 5]
    assert [h["round"] for h in result.history] == [1, 2, 3, 4, 5]
    assert result.best_round in validated


def test_a_site_scores_at_most_validation_cases_the_same_subset_each_round(tmp_path: Path) -> None:
    from securefed.federation.client_app import SiteClient

    proto = write_protocol(tmp_path, rounds=2, aggregation="fedavg", min_sites=1)
    proto.write_text(proto.read_text().replace("local_steps = 3", "local_steps = 3\n"
                                               "validation_cases = 1"))  # fmt: skip
    layout = {1: [("train", 0)] * 2 + [("val", 0)] * 3}
    asg = write_assignments(tmp_path / "clusters.csv", layout)
    site = SiteSettings(partition_id=1, data_dir=str(tmp_path), protocol=str(proto),
                        assignments=str(asg), work_dir=str(tmp_path / "s1"))  # fmt: skip
    client = SiteClient(make_task(), site)
    params = client.get_parameters({})
    seen = []
    for rnd in (1, 2):
        config = {"protocol-hash": client.loaded.sha256, "server-round": rnd, "cluster": -1}
        _, n_val, metrics = client.evaluate(params, config)
        assert n_val == 1 and metrics["num_val"] == 1
        seen.append(client._data(config, "val")[1])
    assert seen == [1, 1]
    data_1 = client._data({"cluster": -1}, "val")
    data_2 = client._data({"cluster": -1}, "val")
    assert data_1[0] is data_2[0]  # the same cases (one cached set), round after round
