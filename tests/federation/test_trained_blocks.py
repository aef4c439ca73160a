"""training.trainable in Flower's simulation engine under SecAgg+: the sites send back only the
trained arrays (the upload shrinks to them), the server puts the rest back from the round's start
model, and the frozen arrays of the phase's model equal the start bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from support.dpsgd import PROTOCOL, dp_task
from support.flower import write_assignments

from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.federation.task import sent_indices
from securefed.models import build_model
from securefed.protocol import load_protocol
from securefed.study.wire import estimate_upload, wire_summary

LAYOUT = {
    1: [("train", 0)] * 2 + [("val", 0)],
    2: [("train", 0)] * 2 + [("val", 0)],
    3: [("train", 0)] * 2 + [("val", 0)],
}


def test_only_the_trained_blocks_travel_and_the_rest_stays_at_the_start(tmp_path) -> None:
    text = PROTOCOL.format(rounds=2, finetune=0, enabled="false")
    text = text.replace(
        'aggregation = "fedavg"\n',
        'aggregation = "secagg+"\nmodel = "dp-unet"\ntrainable = "output-block"\n'
        "min_sites_per_aggregate = 2\n",
    )
    text += "[secure_aggregation]\nnum_shares = 3\nreconstruction_threshold = 2\ntimeout_s = 120\n"
    (tmp_path / "protocol.toml").write_text(text)
    loaded = load_protocol(tmp_path / "protocol.toml")
    spec = loaded.protocol.training
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    sites = [SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(tmp_path /
                          "protocol.toml"), assignments=str(asg),
                          ledger_dir=str(tmp_path / "sites" / f"site-{p}"))
             for p in LAYOUT]  # fmt: skip
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites={1: 2, 2: 2, 3: 2},
                       assignments=asg)  # fmt: skip
    task = dp_task()
    trained = sent_indices(task, spec)
    assert trained is not None
    assert cfg.sent_positions == trained
    result = run_phase(cfg, sites, task=task)

    torch.manual_seed(spec.seed)  # the seeded start every site builds (no public weights here)
    start = task.get_weights(build_model(spec))
    assert len(result.best_weights) == len(start)
    for i, (new, old) in enumerate(zip(result.best_weights, start, strict=True)):
        if i in trained:
            assert not np.array_equal(new, old), i  # trained, and moved
        else:
            assert np.array_equal(new, old), i  # never sent, never quantised: bit-exact
    sent_values = sum(int(start[i].size) for i in trained)
    assert sent_values == 2_841
    wire = wire_summary(tmp_path / "sites", "secagg+", sum(int(w.size) for w in start))
    assert wire["rounds_measured"] == 2 * len(LAYOUT)
    # SecAgg+'s masked int64 vector of the trained values, plus its key and share messages
    assert 8 * sent_values <= wire["bytes_per_client_per_round"] < 8 * sent_values + 20_000
    assert estimate_upload(loaded.protocol)["bytes_per_client_per_round"] == 8 * sent_values
