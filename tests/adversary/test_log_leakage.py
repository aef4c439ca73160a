"""The site's exported logs tell the auditor nothing the protocol's epsilon protects (issue "every
accepted epsilon", bug 3): under secure-aggregate features a site's cluster membership is covered
by no epsilon, yet its `training-round` audit entries were written only for the clusters it holds.
Two sites that differ only in which clusters they hold ({0, 1} against {0, 1, 2, 3}) now leave
the same audit log and ledger, up to times and hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.flower import make_task, write_assignments, write_protocol
from support.privacy import COLUMNS, reference_matrix

from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings
from securefed.privacy.bounds import derive_bounds, write_bounds
from securefed.trust.audit_log import AUDIT_FILE


def _protocol(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    proto = write_protocol(folder, rounds=1, finetune=1, timeout=60)
    bounds = derive_bounds(reference_matrix(), COLUMNS, source="synthetic test data")
    digest = write_bounds(bounds, folder / "bounds.json")
    text = proto.read_text().replace("total_epsilon = 1.0", "total_epsilon = 1000.0")
    text = text.replace("[secure_aggregation]", "[training.client_dp]\nenabled = true\n"
                        "epsilon = 500.0\nmax_sites = 3\n[secure_aggregation]")  # fmt: skip
    text += (
        f'[release]\nmode = "secure-aggregate"\n'
        f'bounds = {{ file = "bounds.json", sha256 = "{digest}" }}\n'
        '[clustering]\nscaling = "declared-bounds"\nk = 4\nk_selection = "fixed"\n'
        "k_min = 2\nk_max = 4\n"
    )
    proto.write_text(text)
    return proto


def _exported(folder: Path, clusters: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The site's audit log and ledger after the coordinator ran the global round and one
    finetuning round of each of the protocol's 4 clusters."""
    proto = _protocol(folder)
    layout = {1: [("train", c) for c in clusters for _ in range(2)] + [("val", clusters[0])]}
    asg = write_assignments(folder / "clusters.csv", layout)
    site = SiteSettings(1, str(folder), str(proto), work_dir=str(folder / "site"),
                        assignments=str(asg))  # fmt: skip
    client = SiteClient(make_task(), site)
    start = client.get_parameters({})
    for cluster in (-1, 0, 1, 2, 3):
        client.fit(start, {"protocol-hash": client.loaded.sha256, "server-round": 1,
                           "cluster": cluster})  # fmt: skip
    out = {}
    for name in (AUDIT_FILE, "ledger.jsonl"):
        lines = (folder / "site" / name).read_text().splitlines()
        out[name] = [_normalised(json.loads(line)) for line in lines]
    return out


def _normalised(entry: dict[str, Any]) -> dict[str, Any]:
    """Without what differs between any two runs: the date, hashes, the chain links."""
    return {k: v for k, v in entry.items() if k not in ("time", "hash", "prev", "protocol")}


def test_exported_logs_do_not_depend_on_the_clusters_a_site_holds(tmp_path: Path) -> None:
    two = _exported(tmp_path / "two", [0, 1])
    four = _exported(tmp_path / "four", [0, 1, 2, 3])
    assert two == four
    rounds = [e for e in two[AUDIT_FILE] if e["event"] == "training-round"]
    assert len(rounds) == 5  # one per fit, the clusters it holds or not
    for name in ("ledger.jsonl", AUDIT_FILE):  # times: the date only
        lines = (tmp_path / "two" / "site" / name).read_text().splitlines()
        assert all(len(json.loads(line)["time"]) == 10 for line in lines)
