"""BFV aggregation in Flower's simulation engine: the phase matches plain FedAvg within the
quantisation bound, the server's files hold no key, and the decryptor opens a round only once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.flower import make_task, write_assignments, write_protocol

from securefed.crypto.bfv import load_aggregator_context, make_key
from securefed.errors import TrainingError
from securefed.federation.config import SiteSettings
from securefed.federation.he_round import DECRYPTED_FILE
from securefed.federation.phase import phase_config, run_phase
from securefed.protocol import load_protocol

LAYOUT = {
    1: [("train", 0)] * 3 + [("val", 0)] * 2,
    2: [("train", 0)] * 2 + [("train", 1)] + [("val", 1)],
    3: [("train", 1)] * 3 + [("train", 2)] + [("val", 1), ("val", 2)],
}


def _setup(tmp_path, aggregation, key=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proto = write_protocol(tmp_path, aggregation=aggregation, rounds=1, finetune=1)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    sites = []
    for p in LAYOUT:
        ledger = tmp_path / "sites" / str(p)
        if key is not None:
            (ledger / "he").mkdir(parents=True)
            (ledger / "he" / "bfv.key").write_bytes(key.to_bytes())
        sites.append(SiteSettings(partition_id=p, data_dir=str(tmp_path), protocol=str(proto),
                                  assignments=str(asg), ledger_dir=str(ledger)))  # fmt: skip
    return load_protocol(proto), asg, sites


@pytest.fixture(scope="module")
def key():
    return make_key()


def _bfv_config(loaded, out, asg, key, tmp_path):
    ctx_path = tmp_path / "server" / "aggregator.ctx"
    ctx_path.parent.mkdir(parents=True, exist_ok=True)
    ctx_path.write_bytes(key.aggregator_bytes())
    return phase_config(loaded, out_dir=out, sites={1: 3, 2: 3, 3: 4}, assignments=asg,
                        he_context=ctx_path, decryptor=1)  # fmt: skip


def test_bfv_phase_matches_fedavg(tmp_path, key):
    loaded, asg, sites = _setup(tmp_path / "fedavg", "fedavg")
    cfg = phase_config(loaded, out_dir=tmp_path / "fedavg" / "global", sites={1: 3, 2: 3, 3: 4},
                       assignments=asg)  # fmt: skip
    avg = run_phase(cfg, sites, task=make_task())

    loaded, asg, sites = _setup(tmp_path / "bfv", "bfv", key)
    cfg = _bfv_config(loaded, tmp_path / "bfv" / "global", asg, key, tmp_path / "bfv")
    assert cfg.he_fields == 2  # weight sum 3 x 4 fits two values per slot
    he = run_phase(cfg, sites, task=make_task())
    assert he.best_round == avg.best_round == 1
    assert he.history[0]["num_sites"] == 3
    assert he.history[0]["weight_sum"] == 10
    bound = loaded.protocol.secure_aggregation.clipping_range / (2**20 - 1)
    for a, b in zip(he.best_weights, avg.best_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=bound + 1e-6)  # quantisation and float32 only
    # the server's context holds no key; the decryptor recorded the one decryption
    server = load_aggregator_context((tmp_path / "bfv" / "server" / "aggregator.ctx").read_bytes())
    assert not server._ctx.has_secret_key()
    assert not server._ctx.has_public_key()
    decrypted = json.loads((tmp_path / "bfv" / "sites" / "1" / DECRYPTED_FILE).read_text())
    assert decrypted == {"global/1": [1, 2, 3]}
    for p in (2, 3):
        assert not (tmp_path / "bfv" / "sites" / str(p) / DECRYPTED_FILE).exists()


def test_decryptor_refuses_a_second_decryption(tmp_path, key):
    """The server loses its checkpoint and runs round 1 again: two sums of one round could
    differ by one site's model. Every site refuses to train in round 1 again (rounds only move
    forward); with the sites' round counters lost as well, the decryptor still refuses to open a
    second sum of the round, and the phase fails."""
    from securefed.errors import TooFewParticipantsError
    from securefed.federation.site_runtime import ROUNDS_FILE

    loaded, asg, sites = _setup(tmp_path, "bfv", key)
    cfg = _bfv_config(loaded, tmp_path / "first" / "global", asg, key, tmp_path)
    run_phase(cfg, sites, task=make_task())
    again = _bfv_config(loaded, tmp_path / "second" / "global", asg, key, tmp_path)
    with pytest.raises(TooFewParticipantsError, match="0 of 3 sites sent a contribution"):
        run_phase(again, sites, task=make_task())
    for site in sites:
        (Path(site.ledger_dir) / ROUNDS_FILE).unlink()
    third = _bfv_config(loaded, tmp_path / "third" / "global", asg, key, tmp_path)
    # The decryptor's reply carries the code only; its log holds the refusal.
    with pytest.raises(TrainingError, match="instruction-refused"):
        run_phase(third, sites, task=make_task())


def test_a_site_that_is_not_the_decryptor_refuses(tmp_path, key):
    """With listed sites the protocol fixes the decryptor; the server cannot pick another."""
    loaded, asg, sites = _setup(tmp_path, "bfv", key)
    text = (tmp_path / "protocol.toml").read_text()
    listed = "".join(f'\n[[sites]]\nid = "h{p}"\npartition_id = {p}\n' for p in LAYOUT)
    (tmp_path / "protocol.toml").write_text(text + listed)
    loaded = load_protocol(tmp_path / "protocol.toml")
    assert loaded.protocol.decryptor_partition() == 1
    ctx_path = tmp_path / "server" / "aggregator.ctx"
    ctx_path.parent.mkdir(parents=True, exist_ok=True)
    ctx_path.write_bytes(key.aggregator_bytes())
    cfg = phase_config(loaded, out_dir=tmp_path / "global", sites={1: 3, 2: 3, 3: 4},
                       assignments=asg, he_context=ctx_path, decryptor=2)  # fmt: skip
    with pytest.raises(TrainingError, match="instruction-refused"):
        run_phase(cfg, sites, task=make_task())


def test_the_decryptor_opens_only_a_round_it_trained_in_with_its_own_contribution(tmp_path, key):
    """Hostile coordinator, item 3: the decryptor decrypted any MAC-valid sum of >= 2 sites for
    a (phase, round) of the server's choosing, so sums {1,2}, {2,3}, {1,3} separated a site.
    Now, for a phase it holds cases of, it opens only a round it encrypted a contribution for,
    and only a sum holding that contribution; refused before anything is decrypted."""
    from securefed.errors import InstructionRefusedError
    from securefed.federation.he_round import TRAINED_FILE, _check_trained

    _, _, sites = _setup(tmp_path, "bfv", key)
    site = sites[0]  # partition 1, the decryptor of the run
    folder = tmp_path / "decryptor"
    folder.mkdir()
    with pytest.raises(InstructionRefusedError, match="did not train in it"):
        _check_trained(folder, site, "global", 1, [1, 2])
    (folder / TRAINED_FILE).write_text(json.dumps({"global/1": True}))
    _check_trained(folder, site, "global", 1, [1, 2])  # its own round, its own contribution
    with pytest.raises(InstructionRefusedError, match="without this site's own contribution"):
        _check_trained(folder, site, "global", 1, [2, 3])
    with pytest.raises(InstructionRefusedError, match="did not train in it"):
        _check_trained(folder, site, "global", 2, [1, 2])
