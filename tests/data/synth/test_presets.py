"""Presets: institution sizes, scanner fleets and the deterministic case plan."""

from collections import Counter

import pytest

from securefed.data.synth import PRESETS, SCANNERS, plan_cases
from securefed.data.synth.presets import FETS2022_SIZES, get_preset
from securefed.errors import ConfigError


def test_fets_1251_has_the_exact_fets2022_sizes() -> None:
    preset = PRESETS["fets-1251"]
    assert preset.n_cases == 1251
    assert tuple(i.n_cases for i in preset.institutions) == FETS2022_SIZES
    assert [i.partition_id for i in preset.institutions] == list(range(1, 24))


def test_fets_1251_shifted_keeps_the_sizes_and_shifts_small_and_large_institutions() -> None:
    """A majority of cases on standard scanners; each of the three shifted acquisitions at
    institutions of very different sizes; one of them confined to the tumour."""
    from securefed.data.synth.presets import FETS_SHIFTED_GROUPS

    preset = PRESETS["fets-1251-shifted"]
    assert tuple(i.n_cases for i in preset.institutions) == FETS2022_SIZES
    assert preset.spacing_mm == 4.0
    groups: dict[str, list[int]] = {}
    for inst in preset.institutions:
        names = {n for n, _ in inst.scanners}
        shifted = {n for n in names if SCANNERS[n].contrast}
        assert not shifted or names == shifted  # an institution is shifted or standard
        for n in shifted:
            groups.setdefault(n, []).append(inst.n_cases)
        assert bool(shifted) == (inst.partition_id in FETS_SHIFTED_GROUPS)
    assert set(groups) == {"ge-1.5t-weak-enhancement", "philips-3t-flair-unsuppressed",
                           "siemens-3t-enhancement-only"}  # fmt: skip
    standard = preset.n_cases - sum(sum(v) for v in groups.values())
    assert standard > preset.n_cases / 2
    for sizes in groups.values():
        assert len(sizes) == 3 and max(sizes) >= 3 * min(sizes)
    tumour_only = SCANNERS["siemens-3t-enhancement-only"]
    assert {t for m, t, _ in tumour_only.contrast} <= {"et", "ncr"}  # healthy tissue unchanged


def test_fets_like_is_scaled_with_at_least_three_cases() -> None:
    sizes = [i.n_cases for i in PRESETS["fets-like"].institutions]
    assert len(sizes) == 23
    assert min(sizes) >= 3
    assert sizes[0] == max(sizes)
    assert sizes[17] == sorted(sizes)[-2]


def test_demo_shape() -> None:
    demo = PRESETS["demo"]
    assert 40 <= demo.n_cases <= 50
    assert 5 <= len(demo.institutions) <= 6
    assert any(len(i.scanners) >= 2 for i in demo.institutions)
    standard = {n for n, p in SCANNERS.items() if not p.contrast}
    assert {n for i in demo.institutions for n, _ in i.scanners} == standard


def test_shifted_preset_mixes_standard_and_contrast_shifted_acquisitions() -> None:
    preset = PRESETS["shifted"]
    names = {n for i in preset.institutions for n, _ in i.scanners}
    shifted = {n for n in names if SCANNERS[n].contrast}
    assert shifted == {"ge-1.5t-weak-enhancement", "philips-3t-flair-unsuppressed"}
    assert names - shifted  # a majority on standard scanners to learn from


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_scanners_are_known_and_shared(name: str) -> None:
    preset = PRESETS[name]
    users = Counter(n for i in preset.institutions for n, _ in i.scanners)
    assert set(users) <= set(SCANNERS)
    if len(preset.institutions) > 1:  # a federation (`public` is one institution's data)
        assert max(users.values()) >= 2  # several institutions share a model
    specs = plan_cases(preset, seed=3)
    assert len(specs) == preset.n_cases
    assert len({s.subject_id for s in specs}) == len(specs)
    per_inst = Counter(s.partition_id for s in specs)
    assert [per_inst[i.partition_id] for i in preset.institutions] == [
        i.n_cases for i in preset.institutions
    ]


def test_multi_scanner_institutions_use_every_scanner() -> None:
    specs = plan_cases(PRESETS["fets-like"], seed=0)
    for inst in PRESETS["fets-like"].institutions:
        used = {s.scanner for s in specs if s.partition_id == inst.partition_id}
        assert used == {n for n, _ in inst.scanners}


def test_plan_is_deterministic_per_seed() -> None:
    a = plan_cases(PRESETS["demo"], seed=1)
    assert a == plan_cases(PRESETS["demo"], seed=1)
    assert [s.scanner for s in a] != [s.scanner for s in plan_cases(PRESETS["demo"], seed=2)]


def test_unknown_preset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        get_preset("nope")
