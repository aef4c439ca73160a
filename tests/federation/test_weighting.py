"""The case-weighted cluster average under all-sites membership (secure-aggregate features), in
Flower's simulation engine with SecAgg+: every site joins cluster 0's federation, the site that
holds none of its cases sends a zero update of weight 0, and the opened aggregate decodes to the
FedAvg of the two holders weighted by their train cases, not to a dilution by the third site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.flower import make_task, write_assignments, write_protocol
from support.privacy import COLUMNS, reference_matrix

from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.federation.weighting import decode_weighted
from securefed.privacy.bounds import derive_bounds, write_bounds
from securefed.protocol import load_protocol
from securefed.training.checkpoints import save_weights

LAYOUT = {
    1: [("train", 0)] * 3 + [("val", 0)],
    2: [("train", 0)] * 1 + [("train", 1)] * 2 + [("val", 1)],
    3: [("train", 1)] * 3 + [("val", 1)],  # no case of cluster 0
}


def _secure_protocol(folder: Path, aggregation: str = "secagg+") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    proto = write_protocol(folder, rounds=1, finetune=1, aggregation=aggregation, timeout=120)
    bounds = derive_bounds(reference_matrix(), COLUMNS, source="synthetic test data")
    digest = write_bounds(bounds, folder / "bounds.json")
    text = proto.read_text().replace("total_epsilon = 1.0", "total_epsilon = 4.0")
    text = text.replace("[secure_aggregation]", "[secure_aggregation]\nmax_weight = 4.0")
    proto.write_text(
        text + '[release]\nmode = "secure-aggregate"\n'
        f'bounds = {{ file = "bounds.json", sha256 = "{digest}" }}\n'
        '[clustering]\nscaling = "declared-bounds"\n'
    )
    return proto


def _sites(folder: Path, proto: Path, asg: Path, tag: str) -> list[SiteSettings]:
    return [SiteSettings(partition_id=p, data_dir=str(folder), protocol=str(proto),
                         assignments=str(asg), work_dir=str(folder / f"{tag}{p}"),
                         ledger_dir=str(folder / f"{tag}{p}"))
            for p in LAYOUT]  # fmt: skip


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a).ravel() for a in arrays])


def test_a_secagg_cluster_phase_is_the_holders_case_weighted_fedavg(tmp_path: Path) -> None:
    proto = _secure_protocol(tmp_path)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    loaded = load_protocol(proto)
    start = make_task().get_weights(make_task().build_model(loaded.protocol.training))
    save_weights(tmp_path / "start.npz", start)
    cfg = phase_config(loaded, out_dir=tmp_path / "cluster-0", sites=dict.fromkeys(LAYOUT),
                       assignments=asg, cluster=0,
                       initial_weights=tmp_path / "start.npz")  # fmt: skip
    assert cfg.weighted and cfg.max_weight == 1  # the clear FedAvg weights are the public 1
    result = run_phase(cfg, _sites(tmp_path, proto, asg, "flower"), task=make_task())
    assert [h["round"] for h in result.history] == [1]
    assert result.history[0]["num_sites"] == 3
    assert result.history[0]["weight_sum"] == 3  # what the clear weights tell: the site count
    # The same round, each site's reply computed directly (its seeds are the protocol's in
    # simulation), then the means SecAgg+ opens.
    config = {"protocol-hash": loaded.sha256, "server-round": 1, "cluster": 0}
    replies = [SiteClient(make_task(), s).fit(start, dict(config))[0]
               for s in _sites(tmp_path, proto, asg, "direct")]  # fmt: skip
    assert [float(r[-1][0]) for r in replies] == [3 / 4, 1 / 4, 0.0]
    assert not any(np.any(a) for a in replies[2])  # the site without cluster 0 sends zeros
    trained = [[s + u / w for s, u in zip(start, r[:-1], strict=True)]
               for r, w in zip(replies[:2], (3 / 4, 1 / 4), strict=True)]  # fmt: skip
    holders = [s + (3 * (a - s) + 1 * (b - s)) / 4
               for s, a, b in zip(start, *trained, strict=True)]  # fmt: skip
    mean = [sum(parts) / 3 for parts in zip(*replies, strict=True)]
    np.testing.assert_allclose(
        np.concatenate([a.ravel() for a in decode_weighted(start, mean)]),
        np.concatenate([a.ravel() for a in holders]), atol=1e-6,
    )  # fmt: skip
    got = np.concatenate([a.ravel() for a in result.best_weights])
    want = np.concatenate([a.ravel() for a in holders])
    diluted = np.concatenate(
        [((a + b + s) / 3).ravel() for s, a, b in zip(start, *trained, strict=True)]
    )
    # ^ every site's model with weight 1, the site without cases returning the start model
    np.testing.assert_allclose(got, want, atol=2e-4)  # SecAgg+ quantisation only
    assert np.abs(got - want).max() < 0.1 * np.abs(diluted - want).max()


def test_a_bfv_cluster_phase_is_the_same_weighted_average(tmp_path: Path) -> None:
    """Under BFV the scaled updates and the weights are encrypted; the decryptor opens their
    means and the server decodes the same model as under SecAgg+ (both quantised)."""
    from securefed.crypto.bfv import make_key

    key = make_key()
    results = {}
    for agg in ("secagg+", "bfv"):
        folder = tmp_path / agg
        proto = _secure_protocol(folder, agg)
        asg = write_assignments(folder / "clusters.csv", LAYOUT)
        loaded = load_protocol(proto)
        start = make_task().get_weights(make_task().build_model(loaded.protocol.training))
        save_weights(folder / "start.npz", start)
        sites = _sites(folder, proto, asg, "site")
        extra = {}
        if agg == "bfv":
            for site in sites:
                (Path(site.ledger_dir) / "he").mkdir(parents=True)
                (Path(site.ledger_dir) / "he" / "bfv.key").write_bytes(key.to_bytes())
            ctx = folder / "server" / "aggregator.ctx"
            ctx.parent.mkdir(parents=True)
            ctx.write_bytes(key.aggregator_bytes())
            extra = {"he_context": ctx, "decryptor": 1}
        cfg = phase_config(loaded, out_dir=folder / "cluster-0", sites=dict.fromkeys(LAYOUT),
                           assignments=asg, cluster=0, initial_weights=folder / "start.npz",
                           **extra)  # fmt: skip
        assert cfg.weighted
        results[agg] = _flat(run_phase(cfg, sites, task=make_task()).best_weights)
        start_flat = _flat(start)
    bound = 8.0 / (2**20 - 1) * 4 + 2e-4  # BFV fixed point (scaled back by 1/w) + SecAgg+
    np.testing.assert_allclose(results["bfv"], results["secagg+"], atol=bound)
    assert np.abs(results["bfv"] - start_flat).max() > 10 * bound  # the round moved the model


def _dp_secure_site(folder: Path) -> SiteClient:
    """One site of a DP-SGD protocol with secure-aggregate features and CFFL (3 clusters; the
    site holds 2 train cases of cluster 0, 1 of cluster 1, none of cluster 2)."""
    from support.dpsgd import PROTOCOL, dp_task

    folder.mkdir(parents=True, exist_ok=True)
    bounds = derive_bounds(reference_matrix(), COLUMNS, source="synthetic test data")
    digest = write_bounds(bounds, folder / "bounds.json")
    text = PROTOCOL.format(rounds=1, finetune=2, enabled="true")
    text = text.replace('k = 2\nk_selection = "fixed"\nk_min = 2\nk_max = 2',
                        'k = 3\nk_selection = "fixed"\nk_min = 3\nk_max = 3\n'
                        'scaling = "declared-bounds"')  # fmt: skip
    text = text.replace('aggregation = "fedavg"', 'aggregation = "secagg+"\n'
                        'baselines = ["fedavg", "cffl"]\nmin_sites_per_aggregate = 2')  # fmt: skip
    text = text.replace("population = 8", "population = 8\nweight_noise = 16.0")
    text += ('[release]\nmode = "secure-aggregate"\n'
             f'bounds = {{ file = "bounds.json", sha256 = "{digest}" }}\n')  # fmt: skip
    (folder / "protocol.toml").write_text(text)
    layout = {1: [("train", 0), ("train", 0), ("train", 1), ("val", 0)]}
    asg = write_assignments(folder / "clusters.csv", layout)
    site = SiteSettings(1, str(folder), str(folder / "protocol.toml"), work_dir=str(folder / "w"),
                        assignments=str(asg))  # fmt: skip
    return SiteClient(dp_task(), site)


def test_dp_sgd_under_secure_aggregate_charges_and_noises_every_cluster_round(
    tmp_path: Path,
) -> None:
    """DP-SGD with secure-aggregate features and CFFL: a site without cases of a cluster runs
    the same DP-SGD round, noise only, charged the same event as a holder's round (the plan's
    finetuning event: the steps and the Gaussian of the weight); every reply's weight is noised;
    the calibration covers the weights' events."""
    import dp_accounting

    from securefed.privacy import read_ledger
    from securefed.training import dpsgd

    client = _dp_secure_site(tmp_path)
    plan = dpsgd.plan_dpsgd(client.loaded.protocol)
    assert plan.weight_noise == client.loaded.protocol.training.dp_sgd.weight_noise == 16.0
    assert plan.planned_epsilon() <= 3.0
    assert isinstance(plan.finetune_event(1), dp_accounting.ComposedDpEvent)
    start = client.get_parameters({})
    replies = {}
    for cluster in (0, 2):
        config = {"protocol-hash": client.loaded.sha256, "server-round": 1, "cluster": cluster}
        sent, n, metrics = client.fit(start, config)
        assert (n, metrics) == (1, {})
        assert len(sent) == len(start) + 1
        replies[cluster] = sent
    # the empty cluster's update is DP-SGD noise, not zero, and its weight a noise share
    assert any(np.any(a) for a in replies[2][:-1])
    batch = client.loaded.protocol.training.batch_size
    for cluster, expected in ((0, 2 / batch), (2, 0.0)):
        weight = float(replies[cluster][-1][0])
        assert weight != expected  # noised (a continuous-looking draw on a fine grid)
        assert abs(weight - expected) < 12 * 16.0 / np.sqrt(2) / batch  # 12 share std
    charges = read_ledger(Path(client.ledger_dir) / "ledger.jsonl").charges
    ids = ["training/cluster-0/round-1", "training/cluster-2/round-1"]
    assert [r for r in charges if r.startswith("training/")] == ids
    holder, empty = (charges[r] for r in ids)
    assert holder.event == empty.event  # the same mechanism, with or without cases
    assert holder.event == plan.finetune_event(plan.steps_per_round)


def test_dp_sgd_weighted_decode_floors_the_noised_weight_at_one_batch() -> None:
    start = [np.zeros(3, dtype=np.float32)]
    update = [np.full(3, 0.3, dtype=np.float32), np.asarray([0.05], dtype=np.float32)]
    floored = decode_weighted(start, update, n_sites=3, floor=1.0)  # sum 0.15 < one batch
    np.testing.assert_allclose(floored[0], 0.3 * 3, rtol=1e-6)  # divided by 1/3 (mean floor)
    plain = decode_weighted(start, update, n_sites=3)
    np.testing.assert_allclose(plain[0], 0.3 / 0.05, rtol=1e-6)
    negative = [update[0], np.asarray([-0.2], dtype=np.float32)]
    np.testing.assert_allclose(decode_weighted(start, negative, n_sites=3, floor=1.0)[0], 0.9,
                               rtol=1e-6)  # fmt: skip
    assert not np.any(decode_weighted(start, negative, n_sites=3)[0])  # no floor: start kept


def test_a_dp_sgd_cluster_phase_runs_under_secagg_with_every_site(tmp_path: Path) -> None:
    """The same protocol in Flower's simulation engine: three sites in cluster 2's federation
    under SecAgg+, only site 3 holds its cases; every site's ledger is charged the same event
    and the phase's model moves."""
    from support.dpsgd import dp_task

    from securefed.privacy import read_ledger

    folder = tmp_path / "dp"
    client = _dp_secure_site(folder)
    proto = Path(client.site.protocol)
    layout = {1: [("train", 0), ("train", 0), ("val", 0)],
              2: [("train", 1), ("train", 1), ("val", 1)],
              3: [("train", 2), ("train", 2), ("train", 1), ("val", 2)]}  # fmt: skip
    asg = write_assignments(folder / "clusters-3.csv", layout)
    sites = [SiteSettings(partition_id=p, data_dir=str(folder), protocol=str(proto),
                          assignments=str(asg), work_dir=str(folder / f"s{p}"))
             for p in layout]  # fmt: skip
    loaded = load_protocol(proto)
    start = client.get_parameters({})  # the protocol's (DP variant) model
    save_weights(folder / "start.npz", start)
    cfg = phase_config(loaded, out_dir=folder / "cluster-2", sites=dict.fromkeys(layout),
                       assignments=asg, cluster=2,
                       initial_weights=folder / "start.npz")  # fmt: skip
    assert cfg.weighted and cfg.dp_training == "dp-sgd"
    result = run_phase(cfg, sites, task=dp_task())
    assert [h["round"] for h in result.history] == [1, 2]
    moved = np.abs(_flat(result.best_weights) - _flat(start)).max()
    assert moved > 1e-4
    events = set()
    for p in layout:
        charges = read_ledger(folder / f"s{p}" / "ledger.jsonl").charges
        ids = [r for r in charges if r.startswith("training/cluster-2/")]
        assert ids == ["training/cluster-2/round-1", "training/cluster-2/round-2"], p
        events |= {repr(charges[r].event) for r in ids}
    assert len(events) == 1  # holders and non-holders: one mechanism
