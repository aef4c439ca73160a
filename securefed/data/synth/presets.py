"""Federation presets: institutions, their sizes and the scanners each one runs.

A preset is pure data. `plan_cases` turns it into one `CaseSpec` per case, deterministically for a
seed: subject ids are numbered institution by institution, and each institution's cases are
split between its scanners in fixed proportions (a seeded shuffle decides which case gets which).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.errors import ConfigError

__all__ = [
    "FETS2022_SIZES",
    "FETS_SHIFTED_GROUPS",
    "PRESETS",
    "CaseSpec",
    "Institution",
    "Preset",
    "get_preset",
    "plan_cases",
]

# FeTS2022 partitioning_1: cases per institution, institutions 1..23 (PAPER.md).
FETS2022_SIZES: tuple[int, ...] = (
    511, 6, 15, 47, 22, 34, 12, 8, 4, 8, 14, 11, 35, 6, 13, 30, 9, 382, 4, 33, 35, 7, 5,
)  # fmt: skip


@dataclass(frozen=True)
class Institution:
    """One institution (partition id) with its case count and its scanners with their shares."""

    partition_id: int
    n_cases: int
    scanners: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    institutions: tuple[Institution, ...]
    spacing_mm: float

    @property
    def n_cases(self) -> int:
        return sum(inst.n_cases for inst in self.institutions)


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to generate one case, independent of the other cases."""

    subject_id: str
    index: int
    partition_id: int
    scanner: str
    seed: int


def _one(name: str) -> tuple[tuple[str, float], ...]:
    return ((name, 1.0),)


# Scanner fleets for the 23 FeTS-like institutions: the two large ones run three scanners, a few
# run two, the rest one; every model is shared by several institutions.
_FETS_SCANNERS: tuple[tuple[tuple[str, float], ...], ...] = (
    (("siemens-3t", 0.5), ("ge-1.5t", 0.3), ("philips-3t", 0.2)),  # 1
    _one("philips-3t"),  # 2
    _one("ge-1.5t"),  # 3
    (("siemens-3t", 0.6), ("legacy-1.5t", 0.4)),  # 4
    _one("siemens-1.5t-thick"),  # 5
    (("ge-1.5t", 0.5), ("philips-3t", 0.5)),  # 6
    _one("legacy-1.5t"),  # 7
    _one("siemens-3t"),  # 8
    _one("philips-3t"),  # 9
    _one("siemens-1.5t-thick"),  # 10
    _one("ge-1.5t"),  # 11
    _one("siemens-3t"),  # 12
    (("philips-3t", 0.5), ("siemens-1.5t-thick", 0.5)),  # 13
    _one("legacy-1.5t"),  # 14
    _one("ge-1.5t"),  # 15
    (("siemens-3t", 0.5), ("ge-1.5t", 0.5)),  # 16
    _one("philips-3t"),  # 17
    (("ge-1.5t", 0.4), ("siemens-1.5t-thick", 0.35), ("legacy-1.5t", 0.25)),  # 18
    _one("siemens-3t"),  # 19
    (("philips-3t", 0.6), ("legacy-1.5t", 0.4)),  # 20
    _one("siemens-1.5t-thick"),  # 21
    _one("ge-1.5t"),  # 22
    _one("legacy-1.5t"),  # 23
)


def _fets_institutions(sizes: tuple[int, ...]) -> tuple[Institution, ...]:
    return tuple(
        Institution(i + 1, n, fleet)
        for i, (n, fleet) in enumerate(zip(sizes, _FETS_SCANNERS, strict=True))
    )


_FETS_LIKE_SIZES = tuple(max(3, round(n / 5)) for n in FETS2022_SIZES)

# fets-1251-shifted: which institutions acquire with a contrast-shifted protocol (the rest keep
# their fets-1251 fleets of standard scanners). Small and large ones in every shifted group; one
# group's shift is confined to the tumour (whole-brain radiomics' blind spot).
_WEAK, _FLAIR, _ENH = (
    "ge-1.5t-weak-enhancement", "philips-3t-flair-unsuppressed", "siemens-3t-enhancement-only"
)  # fmt: skip
FETS_SHIFTED_GROUPS: dict[int, str] = {
    3: _WEAK, 7: _WEAK, 18: _WEAK,  # 15, 12 and 382 cases
    4: _FLAIR, 9: _FLAIR, 20: _FLAIR,  # 47, 4 and 33
    12: _ENH, 16: _ENH, 22: _ENH,  # 11, 30 and 7
}  # fmt: skip


def _fets_shifted_institutions() -> tuple[Institution, ...]:
    return tuple(
        Institution(inst.partition_id, inst.n_cases, _one(FETS_SHIFTED_GROUPS[inst.partition_id]))
        if inst.partition_id in FETS_SHIFTED_GROUPS else inst
        for inst in _fets_institutions(FETS2022_SIZES)
    )  # fmt: skip


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        name="demo",
        description="45 cases, 6 institutions (one with two scanners), 5 scanner models, 3 mm",
        institutions=(
            Institution(1, 14, (("siemens-3t", 0.5), ("ge-1.5t", 0.5))),
            Institution(2, 9, _one("philips-3t")),
            Institution(3, 7, _one("siemens-1.5t-thick")),
            Institution(4, 6, _one("siemens-3t")),
            Institution(5, 5, _one("legacy-1.5t")),
            Institution(6, 4, _one("philips-3t")),
        ),
        spacing_mm=3.0,
    ),
    "shifted": Preset(
        name="shifted",
        description="48 cases, 6 institutions, 3 mm: two on standard 3 T scanners, four on "
        "acquisitions whose tissue contrast differs (weak T1ce enhancement, unsuppressed "
        "FLAIR), which per-case z-scoring cannot undo",
        institutions=(
            Institution(1, 12, _one("siemens-3t")),
            Institution(2, 10, (("siemens-3t", 0.6), ("philips-3t", 0.4))),
            Institution(3, 8, _one("ge-1.5t-weak-enhancement")),
            Institution(4, 7, _one("philips-3t-flair-unsuppressed")),
            Institution(5, 6, _one("ge-1.5t-weak-enhancement")),
            Institution(6, 5, _one("philips-3t-flair-unsuppressed")),
        ),
        spacing_mm=3.0,
    ),
    "fets-like": Preset(
        name="fets-like",
        description="FeTS2022 partitioning_1 scaled to 1/5 (at least 3 per institution), 2 mm",
        institutions=_fets_institutions(_FETS_LIKE_SIZES),
        spacing_mm=2.0,
    ),
    "fets-1251": Preset(
        name="fets-1251",
        description="FeTS2022's exact 1251 cases and 23 institution sizes, 4 mm (clustering runs)",
        institutions=_fets_institutions(FETS2022_SIZES),
        spacing_mm=4.0,
    ),
    "fets-1251-shifted": Preset(
        name="fets-1251-shifted",
        description="FeTS2022's 1251 cases and 23 institution sizes, 4 mm; 14 institutions "
        "(710 cases) on standard scanners, 9 on contrast-shifted acquisitions: weak T1ce "
        "enhancement (3, 7, 18: 409 cases), unsuppressed FLAIR (4, 9, 20: 84) and a shift "
        "confined to the tumour (12, 16, 22: 48, enhancement only on a standard 3 T scanner)",
        institutions=_fets_shifted_institutions(),
        spacing_mm=4.0,
    ),
    "public": Preset(
        name="public",
        description="32 cases, one institution, 3 mm, on the two acquisitions of the shifted "
        "preset whose contrast differs (weak T1ce enhancement, unsuppressed FLAIR): a stand-in "
        "for a public dataset from other scanners than the demo's, for pretraining a starting "
        "model (`securefed pretrain`) that the sites then finetune",
        institutions=(
            Institution(
                1, 32, (("ge-1.5t-weak-enhancement", 0.5), ("philips-3t-flair-unsuppressed", 0.5))
            ),
        ),
        spacing_mm=3.0,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown synthetic preset {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None


def _split_counts(n: int, shares: tuple[float, ...]) -> list[int]:
    """Largest-remainder split of n cases by shares; every scanner gets at least one if n allows."""
    total = sum(shares)
    raw = [n * s / total for s in shares]
    counts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i, c in enumerate(counts):
        if c == 0 and n >= len(counts):
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] = 1
    return counts


def plan_cases(preset: Preset, seed: int) -> list[CaseSpec]:
    """One spec per case; subject ids FeTS2022_00001.. numbered institution by institution."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    specs: list[CaseSpec] = []
    index = 0
    for inst in preset.institutions:
        names = [name for name, _ in inst.scanners]
        counts = _split_counts(inst.n_cases, tuple(share for _, share in inst.scanners))
        assigned = [name for name, c in zip(names, counts, strict=True) for _ in range(c)]
        order = rng.permutation(len(assigned))
        for k in range(inst.n_cases):
            index += 1
            specs.append(
                CaseSpec(
                    subject_id=f"FeTS2022_{index:05d}",
                    index=index,
                    partition_id=inst.partition_id,
                    scanner=assigned[int(order[k])],
                    seed=seed,
                )
            )
    return specs
