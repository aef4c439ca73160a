"""Shared synthetic data for the clustering tests: radiomics-like tables with scanner structure.

Not a test module of its own (no test functions); imported by tests/test_clustering_*.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_FEATURES = 372
SCANNERS = ("siemens-3t", "ge-1.5t", "philips-3t", "legacy-1.5t", "thick")
# (partition id, n cases, scanner mix); institution 1 and 4 split across scanners
INSTITUTIONS = (
    (1, 60, (0.5, 0.3, 0.2, 0, 0)),
    (2, 12, (0, 0, 1, 0, 0)),
    (3, 15, (0, 1, 0, 0, 0)),
    (4, 30, (0.6, 0, 0, 0.4, 0)),
    (5, 14, (0, 0, 0, 0, 1)),
    (6, 20, (0, 0.5, 0.5, 0, 0)),
    (7, 1, (0, 0, 0, 1, 0)),
)


def columns() -> list[str]:
    mods = ("flair", "t1", "t1ce", "t2")
    return [f"{mods[i // 93]}_glcm_F{i % 93}" for i in range(N_FEATURES)]


def make_features(seed: int = 0, scale: int = 1) -> dict[str, object]:
    """Case rows: ids, partition ids, splits, scanner labels and a (n, 372) matrix. The scanner
    effect is a fixed offset (same for every seed); cases vary along a few shared directions."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(1234)
    offsets = fixed.normal(0, 1.0, (len(SCANNERS), N_FEATURES))
    loadings = fixed.normal(0, 1.0, (4, N_FEATURES))
    base = fixed.uniform(-5, 5, N_FEATURES)
    ids, parts, splits, scanners, rows = [], [], [], [], []
    for pid, n, mix in INSTITUTIONS:
        n = n * scale
        sc = rng.choice(len(SCANNERS), size=n, p=np.array(mix) / sum(mix))
        for j in range(n):
            ids.append(f"FeTS_{pid:02d}_{j:04d}")
            parts.append(pid)
            splits.append("test" if j % 7 == 6 else ("val" if j % 5 == 4 else "train"))
            scanners.append(SCANNERS[sc[j]])
            anat = rng.normal(0, 0.15, 4) @ loadings
            rows.append(base + offsets[sc[j]] + anat + rng.normal(0, 0.2, N_FEATURES))
    return {
        "ids": ids,
        "parts": np.array(parts),
        "splits": np.array(splits),
        "scanners": np.array(scanners),
        "matrix": np.array(rows),
    }


def write_tables(folder: Path, data: dict[str, object]) -> tuple[Path, Path]:
    """Write features.csv and truth.csv into ``folder``; return their paths."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(data["matrix"], columns=columns())
    df.insert(0, "split", data["splits"])
    df.insert(0, "partition_id", data["parts"])
    df.insert(0, "subject_id", data["ids"])
    df.to_csv(folder / "features.csv", index=False)
    truth = pd.DataFrame(
        {"subject_id": data["ids"], "institution": data["parts"], "scanner": data["scanners"]}
    )
    truth.to_csv(folder / "truth.csv", index=False)
    return folder / "features.csv", folder / "truth.csv"


def write_protocol(folder: Path, release: str, clustering: str, reference_seed: int = 99) -> Path:
    """A simulation protocol in ``folder`` with bounds (and a projection file) derived from a
    reference federation generated with another seed (never the study's data)."""
    from securefed.clustering.fixed_projection import derive_projection
    from securefed.clustering.scaling import scale_to_unit
    from securefed.privacy.bounds import derive_bounds, write_bounds

    ref = make_features(reference_seed)
    bounds = derive_bounds(
        ref["matrix"],
        columns(),
        source="test reference federation, not study data",
        low_pct=1,
        high_pct=99,
        margin=0.1,
    )
    bsha = write_bounds(bounds, folder / "bounds.json")
    unit = scale_to_unit(ref["matrix"], bounds.lower, bounds.upper)
    proj = derive_projection(unit, columns(), bounds.lower, bounds.upper, 3, source="test ref")
    (folder / "projection.json").write_bytes(proj.to_json_bytes())
    import hashlib

    psha = "sha256:" + hashlib.sha256(proj.to_json_bytes()).hexdigest()
    text = f"""schema_version = 1
[study]
name = "t"
mode = "simulation"
[privacy]
total_epsilon = 8.0
total_delta = 1e-5
unsafe_seeded_noise = true
[release]
{release.format(bsha=bsha, psha=psha)}
[clustering]
{clustering}
[secure_aggregation]
num_shares = 3
"""
    path = folder / "protocol.toml"
    path.write_text(text)
    return path
