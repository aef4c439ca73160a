"""Global phases shared between studies (securefed.study.global_cache): studies that differ only
outside the global phase reuse its checkpoint without training; anything the phase depends on
changes the key; DP-trained and bfv phases are never shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.flower import make_task, write_assignments, write_protocol

import securefed.study.cffl as cffl
from securefed.federation.config import SiteSettings
from securefed.federation.phase import phase_config
from securefed.protocol import load_protocol
from securefed.study.cffl import run_cffl_phases
from securefed.study.global_cache import global_phase_key

LAYOUT = {
    1: [("train", 0)] * 2 + [("val", 0)],
    2: [("train", 1)] * 2 + [("val", 1)],
}


def _study(folder: Path, extra: str = "", layout: dict | None = None):  # noqa: ANN202
    folder.mkdir(parents=True, exist_ok=True)
    proto = write_protocol(folder, aggregation="secagg+", rounds=1, finetune=1)
    if extra:
        proto.write_text(proto.read_text() + extra)
    asg = write_assignments(folder / "clusters.csv", layout or LAYOUT)
    data = folder.parent / "data"  # the task makes its volumes from the subject ids
    data.mkdir(exist_ok=True)
    sites = [SiteSettings(partition_id=p, data_dir=str(data), protocol=str(proto),
                          assignments=str(asg))
             for p in (layout or LAYOUT)]  # fmt: skip
    return load_protocol(proto), asg, sites


def _key(folder: Path, extra: str = "", layout: dict | None = None) -> str | None:
    loaded, asg, sites = _study(folder, extra, layout)
    cfg = phase_config(loaded, out_dir=folder / "global", sites={1: 2, 2: 2}, assignments=asg)
    return global_phase_key(loaded, cfg, asg, sites[0].data_dir, make_task())


def test_the_key_follows_what_the_global_phase_depends_on(tmp_path: Path) -> None:
    base = _key(tmp_path / "a")
    assert base is not None
    assert len(base) == 64
    # Clustering settings and the clusters themselves do not enter the global phase.
    assert _key(tmp_path / "b", "[clustering]\nk = 3\n") == base
    moved = {p: [(split, 1 - c) for split, c in rows] for p, rows in LAYOUT.items()}
    assert _key(tmp_path / "c", layout=moved) == base
    # The training recipe, the splits, the site task and the data files do.
    text = (tmp_path / "a" / "protocol.toml").read_text()
    (tmp_path / "d").mkdir()
    assert _key(tmp_path / "d", layout={1: [("train", 0)] * 3, 2: LAYOUT[2]}) != base
    lr = tmp_path / "e"
    lr.mkdir()
    loaded, asg, sites = _study(lr)
    (lr / "protocol.toml").write_text(text.replace("lr = 0.5", "lr = 0.25"))
    loaded = load_protocol(lr / "protocol.toml")
    cfg = phase_config(loaded, out_dir=lr / "global", sites={1: 2, 2: 2}, assignments=asg)
    assert global_phase_key(loaded, cfg, asg, sites[0].data_dir, make_task()) != base
    assert global_phase_key(loaded, cfg, asg, sites[0].data_dir, None) != global_phase_key(
        loaded, cfg, asg, sites[0].data_dir, make_task()
    )  # another site task
    (tmp_path / "data" / "case.nii.gz").write_bytes(b"another image")  # data replaced in place
    assert _key(tmp_path / "b2", "[clustering]\nk = 3\n") != base


def test_dp_training_is_never_shared(tmp_path: Path) -> None:
    dp = "[training.client_dp]\nenabled = true\nepsilon = 1.0\nmax_sites = 3\n"
    loaded, asg, sites = _study(tmp_path / "dp")
    text = (tmp_path / "dp" / "protocol.toml").read_text()
    (tmp_path / "dp" / "protocol.toml").write_text(
        text.replace("[secure_aggregation]", dp + "[secure_aggregation]")
    )
    loaded = load_protocol(tmp_path / "dp" / "protocol.toml")
    assert loaded.protocol.training.dp_training == "client-dp"
    cfg = phase_config(loaded, out_dir=tmp_path / "g", sites={1: 2, 2: 2}, assignments=asg)
    assert global_phase_key(loaded, cfg, asg, sites[0].data_dir) is None


@pytest.mark.slow
def test_a_second_study_reuses_the_global_phase_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    loaded, asg, sites = _study(tmp_path / "a")
    first = run_cffl_phases(loaded, sites, asg, tmp_path / "a" / "phases", task=make_task(),
                            clusters=[], global_cache=cache)  # fmt: skip
    assert not first.global_reused
    assert len(list(cache.iterdir())) == 1

    def no_training(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the global phase ran again")

    monkeypatch.setattr(cffl, "run_phase", no_training)
    loaded_b, asg_b, sites_b = _study(tmp_path / "b", "[clustering]\nk = 3\n")
    second = run_cffl_phases(loaded_b, sites_b, asg_b, tmp_path / "b" / "phases",
                             task=make_task(), clusters=[], global_cache=cache)  # fmt: skip
    assert second.global_reused
    assert second.global_result.best_round == first.global_result.best_round
    for a, b in zip(first.global_result.best_weights, second.global_result.best_weights,
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "b" / "phases" / "global" / "state.json").is_file()
    # Without the cache the study trains (and here, with training patched out, fails).
    with pytest.raises(AssertionError, match="ran again"):
        run_cffl_phases(loaded_b, sites_b, asg_b, tmp_path / "c", task=make_task(), clusters=[])


def test_bfv_is_never_shared(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    proto = write_protocol(tmp_path, aggregation="bfv", rounds=1, finetune=1)
    loaded = load_protocol(proto)
    asg = write_assignments(tmp_path / "clusters.csv", LAYOUT)
    cfg = phase_config(loaded, out_dir=tmp_path / "g", sites={1: 2, 2: 2}, assignments=asg,
                       he_context=tmp_path / "aggregator.ctx", decryptor=1)  # fmt: skip
    assert global_phase_key(loaded, cfg, asg, str(tmp_path)) is None
