"""Site feature folders, study protocols and keys for the site/server release tests."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import tomli_w

from securefed.crypto import generate_keys, load_private_keys, load_public_keys, write_keys
from securefed.privacy import derive_bounds, write_bounds
from securefed.protocol import load_protocol
from securefed.radiomics import FeatureTable, columns, save_table
from securefed.site.release import release_site_features
from securefed.trust import accept_unsigned_simulation as accepted

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "protocols" / "demo.toml"
COLUMNS = columns()


def make_featdir(tmp: Path, settings: dict, n_per_site: int = 6, sites: int = 3) -> Path:
    rng = np.random.default_rng(0)
    ids, parts, splits = [], [], []
    for p in range(1, sites + 1):
        for i in range(n_per_site):
            ids.append(f"FeTS2022_{p:02d}{i:03d}")
            parts.append(p)
            splits.append(("train", "train", "train", "val", "test", "train")[i % 6])
    values = rng.normal(size=(len(ids), len(COLUMNS)))
    table = FeatureTable(ids, parts, splits, COLUMNS, values)
    return save_table(table, tmp / "featdir", {"settings": settings})


def make_protocol(tmp: Path, **release: object) -> Path:
    data = tomllib.loads(DEMO.read_text())
    if release:
        data["release"] = release
        data["clustering"]["scaling"] = "declared-bounds"
    path = tmp / "study.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def keys_for(tmp: Path, sites: int = 3) -> dict:
    folder = tmp / "keys"
    server = generate_keys("server", "server")
    write_keys(server, folder)
    out = {"server": load_private_keys(folder / "server.key")}
    for p in range(1, sites + 1):
        write_keys(generate_keys("site", f"site-{p}"), folder)
        out[f"site-{p}"] = load_private_keys(folder / f"site-{p}.key")
    out["server_pub"] = load_public_keys(folder / "server.pub.json")
    out["site_pubs"] = tuple(load_public_keys(folder / f"site-{p}.pub.json") for p in range(1, 4))
    return out


def release_all(tmp: Path, proto: Path, featdir: Path, keys: dict, inbox: Path) -> list:
    loaded = load_protocol(proto)
    return [
        release_site_features(
            featdir,
            accepted(loaded),
            keys[f"site-{p}"],
            keys["server_pub"],
            inbox,
            tmp / f"state-{p}",
        )
        for p in range(1, 4)
    ]


def local_dp_protocol(tmp: Path, epsilon: float = 4.0) -> Path:
    """The demo protocol with a local-dp Gaussian release (8-dim random projection) and bounds
    from a reference table that is not the study's."""
    ref = np.random.default_rng(1).normal(size=(50, len(COLUMNS)))
    sha = write_bounds(derive_bounds(ref, COLUMNS, source="test reference"), tmp / "bounds.json")
    return make_protocol(
        tmp,
        mode="local-dp",
        mechanism="gaussian",
        epsilon=epsilon,
        delta=1e-6,
        bounds={"file": "bounds.json", "sha256": sha},
        projection="random",
        dimension=8,
        projection_seed=3,
    )
