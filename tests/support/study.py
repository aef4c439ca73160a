"""A tiny synthetic federation and a CPU-sized study protocol for the study tests."""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from securefed.data.synth.presets import Institution, Preset
from securefed.protocol.shipped import shipped_protocol

TINY = Preset(
    name="tiny-e2e",
    description="3 institutions x 5 cases at 6 mm, two scanners",
    institutions=(
        Institution(1, 5, (("siemens-3t", 0.6), ("legacy-1.5t", 0.4))),
        Institution(2, 5, (("siemens-3t", 1.0),)),
        Institution(3, 5, (("legacy-1.5t", 1.0),)),
    ),
    spacing_mm=6.0,
)


def tiny_protocol(
    tmp: Path,
    aggregation: str = "secagg+",
    held_out: tuple[int, ...] = (),
    baselines: tuple[str, ...] = (
        "local",
        "local-finetune",
        "fedavg",
        "cffl",
        "cffl-ideal",
        "centralized",
    ),
) -> Path:
    data = tomllib.loads(shipped_protocol("demo").read_text())
    data["study"]["name"] = "tiny-e2e"
    data["data"]["held_out_partitions"] = list(held_out)
    data["clustering"].update({"k_selection": "fixed", "k": 2, "pca_components": 3, "n_init": 2})
    data["training"].update(
        {
            "crop_size": [16, 16, 16],
            "spacing_mm": 6.0,
            "global_rounds": 1,
            "local_steps": 1,
            "finetune_rounds": 1,
            "local_epochs_baseline": 1,
            "baselines": list(baselines),
            "aggregation": aggregation,
        }
    )
    # one window covers a tiny case (33 x 39 x 32 voxels at 6 mm): 10x faster than four 32^3
    # windows on the 2-core VM (benchmarks/results/tests.md)
    data["evaluation"].update({"roi_size": [40, 40, 32], "hd95": False})
    data["secure_aggregation"]["timeout_s"] = 300  # a bound for hangs; rounds take seconds
    path = tmp / "tiny.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def reference_bounds(tmp: Path, seed: int = 7) -> str:
    """bounds.json in ``tmp`` from a REFERENCE tiny federation (another seed), never from the
    study's data; returns its pinned sha256."""
    import numpy as np

    from securefed.data import load_federation
    from securefed.data.synth import synthesize
    from securefed.privacy import derive_bounds, write_bounds
    from securefed.protocol import load_protocol
    from securefed.radiomics import extract_features

    ref_root = tmp / "reference"
    synthesize(ref_root, preset=TINY, seed=seed)
    fed = load_federation(ref_root)
    demo = load_protocol(shipped_protocol("demo")).protocol
    ref = extract_features(
        list(fed.cases.values()), demo.radiomics, cache_dir=tmp / "refcache",
        partition_of=fed.partition_of, split_of={s: "train" for s in fed.cases},
    )  # fmt: skip
    bounds = derive_bounds(
        np.asarray(ref.table.values), ref.table.columns, source=f"tiny reference, seed {seed}",
        margin=0.1,
    )  # fmt: skip
    return write_bounds(bounds, tmp / "bounds.json")


def tiny_local_dp_protocol(tmp: Path, *, seeded: bool = False) -> Path:
    """The tiny protocol with a local-dp Gaussian release (epsilon 4, 4-dim random projection,
    bounds from a reference federation); ``seeded``: identical noise draws in every run
    (simulation only, NOT private)."""
    sha = reference_bounds(tmp)
    path = tiny_protocol(tmp)
    data = tomllib.loads(path.read_text())
    if seeded:
        data["privacy"]["unsafe_seeded_noise"] = True
    data["release"] = {
        "mode": "local-dp", "mechanism": "gaussian", "epsilon": 4.0, "delta": 1e-6,
        "bounds": {"file": "bounds.json", "sha256": sha}, "projection": "random",
        "dimension": 4, "projection_seed": 3,
    }  # fmt: skip
    data["clustering"]["scaling"] = "declared-bounds"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def tiny_secure_protocol(tmp: Path, min_sites: int = 2) -> Path:
    """The tiny protocol with the secure-aggregate clustering (epsilon 1, a 3-feature subset,
    bounds from a reference federation): no per-case vector leaves a site."""
    sha = reference_bounds(tmp)
    path = tiny_protocol(tmp, baselines=("fedavg", "cffl"))
    data = tomllib.loads(path.read_text())
    data["release"] = {
        "mode": "secure-aggregate", "bounds": {"file": "bounds.json", "sha256": sha},
        "projection": "subset",
        "subset": ["flair_firstorder_Mean", "t1_glcm_Contrast", "t2_firstorder_Entropy"],
    }  # fmt: skip
    data["clustering"]["secure"] = {"epsilon": 1.0, "delta": 1e-6,
                                    "min_sites_per_aggregate": min_sites}  # fmt: skip
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


@dataclass(frozen=True)
class FinishedStudy:
    """A whole study of the tiny federation (every stage, institution 3 held out), with the
    arguments that ran it (``args(out)`` for another run folder) and what it printed."""

    rundir: Path
    protocol: Path
    data: Path
    output: str

    def args(self, out: Path | None = None) -> list[str]:
        return ["run", str(self.protocol), "--data", str(self.data), "--out",
                str(out or self.rundir), "--truth", str(self.data / "truth.csv"),
                "--workers", "1"]  # fmt: skip


def copy_run(rundir: Path, tmp: Path) -> Path:
    """A copy of a session's run folder for a test that writes into it."""
    copy = tmp / rundir.name
    shutil.copytree(rundir, copy)
    return copy
