"""securefed's own task (the paper's DynUNet, securefed.data loading, the local loops) in the
simulation engine under SecAgg+: one tiny round on a tiny synthetic federation."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config, run_phase
from securefed.protocol import load_protocol

PROTOCOL = """schema_version = 1
[study]
name = "flower-real"
mode = "simulation"
[privacy]
total_epsilon = 1.0
[training]
optimizer = "adam"
lr = 0.003
batch_size = 2
crop_size = [16, 16, 16]
crop_sampling = "tumour-centred"
global_rounds = 1
local_steps = 2
aggregation = "secagg+"
[secure_aggregation]
num_shares = 3
reconstruction_threshold = 2
timeout_s = 300
[evaluation]
roi_size = [32, 32, 32]
hd95 = false
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_task_one_secagg_round(tmp_path):
    from securefed.data import load_federation
    from securefed.data.synth import Institution, Preset, synthesize

    preset = Preset(
        name="flower-tiny", description="3 sites x 3 cases",
        institutions=tuple(Institution(p, 3, (("siemens-3t", 1.0),)) for p in (1, 2, 3)),
        spacing_mm=4.0,
    )  # fmt: skip
    data = tmp_path / "data"
    synthesize(data, preset, seed=0, shape=(32, 32, 32))
    fed = load_federation(data)
    rows = ["subject_id,partition_id,split,cluster"]
    for pid in (1, 2, 3):
        ids = sorted(s for s, p in fed.partition_of.items() if p == pid)
        rows += [f"{ids[0]},{pid},val,0"] + [f"{s},{pid},train,0" for s in ids[1:]]
    asg = tmp_path / "clusters.csv"
    asg.write_text("\n".join(rows) + "\n")
    proto = tmp_path / "protocol.toml"
    proto.write_text(PROTOCOL)
    loaded = load_protocol(proto)
    sites = [SiteSettings(partition_id=p, data_dir=str(data), protocol=str(proto),
                          assignments=str(asg))
             for p in (1, 2, 3)]  # fmt: skip
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites={1: 2, 2: 2, 3: 2},
                       assignments=asg)  # fmt: skip
    result = run_phase(cfg, sites)  # default task: securefed's DynUNet
    assert result.best_round == 1
    assert result.history[0]["num_sites"] == 3
    assert result.history[0]["val"]["num_val"] == 3
    assert sum(w.size for w in result.best_weights) == 1_401_891
    assert all(np.isfinite(w).all() for w in result.best_weights)
