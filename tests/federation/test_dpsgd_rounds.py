"""DP-SGD through Flower's simulation engine: two sites train under DP-SGD; a site whose ledger
is already past the training budget refuses and the round goes on without it."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import pytest
from support.dpsgd import PROTOCOL, dp_task
from support.flower import write_assignments

from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.privacy import read_ledger
from securefed.protocol import load_protocol
from securefed.training import dpsgd

LAYOUT = {1: [("train", 0)] * 2 + [("val", 0)], 2: [("train", 0)] * 2 + [("val", 0)]}


@pytest.mark.slow
def test_simulation_dp_round_with_a_site_past_its_budget(tmp_path: Path) -> None:
    proto = tmp_path / "protocol.toml"
    text = PROTOCOL.format(rounds=1, finetune=0, enabled="true")
    proto.write_text(
        text.replace("local_steps = 1", "local_steps = 1\nmin_sites_per_aggregate = 1")
    )
    loaded = load_protocol(proto)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    sites = [SiteSettings(p, str(tmp_path), str(proto), work_dir=str(tmp_path / f"site{p}"),
                          assignments=str(asg)) for p in LAYOUT]  # fmt: skip
    # Site 2 already spent its training allocation (e.g. an earlier run of this study).
    with dpsgd.site_ledger(loaded, 2, tmp_path / "site2").charge(
        "training", "earlier", dp_accounting.GaussianDpEvent(2.0)
    ):
        pass
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites={1: 2, 2: 2}, assignments=asg)
    result = run_phase(cfg, sites, task=dp_task())
    assert [h["round"] for h in result.history] == [1]
    # Under a DP protocol the site sends weight 1 and no validation metric: the server keeps the
    # last round (securefed.protocol.egress).
    assert result.history[0]["num_sites"] == 1
    assert result.history[0]["weight_sum"] == 1
    assert result.history[0]["sites"] == []
    assert result.history[0]["val"]["num_val"] == 0
    assert result.best_round == 1
    one = read_ledger(tmp_path / "site1" / "ledger.jsonl")
    assert list(one.committed) == ["training/global/round-1"]
    two = read_ledger(tmp_path / "site2" / "ledger.jsonl")
    assert list(two.charges) == ["earlier"]  # asked before the round, never sent it
    assert result.stopped is None
