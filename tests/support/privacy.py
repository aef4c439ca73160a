"""Helpers for the privacy tests: small synthetic feature tables and protocol files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from securefed.privacy.bounds import derive_bounds, write_bounds
from securefed.protocol import load_protocol

COLUMNS = tuple(f"{m}_firstorder_F{i}" for m in ("flair", "t1") for i in range(6))


def reference_matrix(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, len(COLUMNS))) * np.arange(1, len(COLUMNS) + 1)


def write_protocol(
    folder: Path,
    *,
    release: str = "",
    privacy: str = "",
    mode: str = "simulation",
    scaling: str = "declared-bounds",
) -> Path:
    """A simulation protocol with a bounds file derived from synthetic reference data."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = derive_bounds(
        reference_matrix(), COLUMNS, source="synthetic test data, NOT study data", margin=0.1
    )
    digest = write_bounds(bounds, folder / "bounds.json")
    text = f"""schema_version = 1
[study]
name = "privacy-test"
mode = "{mode}"
[privacy]
total_epsilon = 2.0
total_delta = 1e-5
{privacy}
[release]
bounds = {{ file = "bounds.json", sha256 = "{digest}" }}
{release}
[clustering]
scaling = "{scaling}"
"""
    path = folder / "protocol.toml"
    path.write_text(text)
    return path


def load(folder: Path, **kwargs: str):  # noqa: ANN201 - LoadedProtocol
    return load_protocol(write_protocol(folder, **kwargs))


def site_table(n: int = 12, seed: int = 1) -> tuple[list[str], tuple[str, ...], np.ndarray]:
    x = reference_matrix(n, seed) * 1.3  # some values fall outside the bounds
    return [f"case-{i:03d}" for i in range(n)], COLUMNS, x
