"""Site release -> sealed envelopes -> server collect, in plain and local-DP modes, and every
refusal at collection (tampering, wrong protocol, replay, foreign partition)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from support.site import COLUMNS, DEMO, keys_for, make_featdir, make_protocol, release_all

from securefed.crypto import generate_keys
from securefed.errors import (
    BudgetExceededError,
    PrivacyError,
    ProtocolError,
)
from securefed.privacy import derive_bounds, read_ledger, write_bounds
from securefed.protocol import load_protocol
from securefed.radiomics import FeatureTable, save_table
from securefed.server.collect import CollectionRefused, collect_features, load_collected
from securefed.site.release import release_site_features
from securefed.trust import accept_unsigned_simulation as accepted


def test_plain_round_trip(tmp_path: Path) -> None:
    proto = make_protocol(tmp_path)
    loaded = load_protocol(proto)
    featdir = make_featdir(tmp_path, loaded.protocol.radiomics.model_dump(mode="json"))
    keys = keys_for(tmp_path)
    results = release_all(tmp_path, proto, featdir, keys, tmp_path / "inbox")
    assert all(r.epsilon == float("inf") and r.cases == 6 for r in results)
    table = collect_features(
        tmp_path / "inbox",
        loaded,
        keys["server"],
        tmp_path / "collected",
        tmp_path / "server",
        site_public_keys=keys["site_pubs"],
    )
    assert table.columns == list(COLUMNS)
    assert len(table.columns) == 372
    back = load_collected(tmp_path / "collected")
    assert back.values.shape == (18, 372)
    assert np.isfinite(back.values).all()
    assert sorted(set(back.partition_ids)) == [1, 2, 3]
    # Plain mode: exactly the site's values, nothing charged.
    from securefed.radiomics import load_table

    raw, _ = load_table(featdir)
    order = [raw.subject_ids.index(s) for s in back.subject_ids]
    np.testing.assert_array_equal(back.values, raw.values[order])
    # Replaying the same inbox is refused as a whole.
    with pytest.raises(CollectionRefused, match="SF152"):
        collect_features(
            tmp_path / "inbox",
            loaded,
            keys["server"],
            tmp_path / "again",
            tmp_path / "server",
            site_public_keys=keys["site_pubs"],
        )
    assert not (tmp_path / "again").exists()


def test_local_dp_release_charges_ledger_and_refuses_past_budget(tmp_path: Path) -> None:
    demo = load_protocol(DEMO)
    featdir = make_featdir(tmp_path, demo.protocol.radiomics.model_dump(mode="json"))
    ref = np.random.default_rng(1).normal(size=(50, len(COLUMNS)))
    bounds = derive_bounds(ref, COLUMNS, source="test reference, not study data")
    sha = write_bounds(bounds, tmp_path / "bounds.json")
    proto = make_protocol(
        tmp_path,
        mode="local-dp",
        mechanism="gaussian",
        epsilon=4.0,
        delta=1e-6,
        bounds={"file": "bounds.json", "sha256": sha},
        projection="random",
        dimension=8,
        projection_seed=3,
    )
    keys = keys_for(tmp_path)
    loaded = load_protocol(proto)
    results = release_all(tmp_path, proto, featdir, keys, tmp_path / "inbox")
    assert all(r.columns == 8 and r.epsilon == 4.0 for r in results)
    table = collect_features(
        tmp_path / "inbox",
        loaded,
        keys["server"],
        tmp_path / "collected",
        tmp_path / "server",
        site_public_keys=keys["site_pubs"],
    )
    assert table.values.shape == (18, 8)
    state = read_ledger(tmp_path / "state-1" / "ledger.jsonl")
    assert 3.0 < state.spent() <= 4.0 + 1e-9  # spend at the total delta (1e-5) <= 4 at 1e-6
    # The same release again is refused (no double release), and a different release of 4 more
    # is refused before any noise: total_epsilon is 8 but RDP composition of two 4s exceeds it
    # or the duplicate is caught; either way no envelope is written.
    with pytest.raises(PrivacyError):
        release_site_features(
            featdir,
            accepted(loaded),
            keys["site-1"],
            keys["server_pub"],
            tmp_path / "out2",
            tmp_path / "state-1",
        )
    assert not list((tmp_path / "out2").glob("*.env"))


def test_release_past_budget_is_refused_before_noise(tmp_path: Path) -> None:
    demo = load_protocol(DEMO)
    settings = demo.protocol.radiomics.model_dump(mode="json")
    featdir = make_featdir(tmp_path, settings)
    ref = np.random.default_rng(1).normal(size=(50, len(COLUMNS)))
    sha = write_bounds(derive_bounds(ref, COLUMNS, source="test reference"), tmp_path / "b.json")
    proto = make_protocol(
        tmp_path,
        mode="local-dp",
        mechanism="laplace",
        epsilon=5.0,
        delta=0.0,
        bounds={"file": "b.json", "sha256": sha},
        projection="random",
        dimension=4,
    )
    keys = keys_for(tmp_path)
    loaded = load_protocol(proto)
    release_site_features(
        featdir,
        accepted(loaded),
        keys["site-1"],
        keys["server_pub"],
        tmp_path / "o1",
        tmp_path / "st",
    )
    # New data (a re-extraction), same site: 5 + 5 > 8 -> refused before noise, no envelope.
    featdir2 = make_featdir(tmp_path / "second", settings)
    raw = featdir2 / "features.csv"
    assert raw.exists()
    from securefed.radiomics import load_table

    t2, _manifest = load_table(featdir2)
    shifted = FeatureTable(t2.subject_ids, t2.partition_ids, t2.splits, t2.columns, t2.values + 1)
    save_table(shifted, featdir2, {"settings": settings})
    with pytest.raises(BudgetExceededError):
        release_site_features(
            featdir2,
            accepted(loaded),
            keys["site-1"],
            keys["server_pub"],
            tmp_path / "o2",
            tmp_path / "st",
        )
    assert not list((tmp_path / "o2").glob("*.env"))
    assert len(read_ledger(tmp_path / "st" / "ledger.jsonl").entries) >= 1


def test_a_budget_refused_release_leaves_a_signed_head(tmp_path: Path) -> None:
    """Issue 28, item 8: a release refused past the budget left the site's audit log ending in
    `budget-refused` without a signed head, so an honest site failed `audit verify`. The
    refusal now closes the log with the site's signed head: it verifies against the site's key
    and its ledger, and records the refusal."""
    from typer.testing import CliRunner

    from securefed.cli import app

    demo = load_protocol(DEMO)
    settings = demo.protocol.radiomics.model_dump(mode="json")
    ref = np.random.default_rng(1).normal(size=(50, len(COLUMNS)))
    sha = write_bounds(derive_bounds(ref, COLUMNS, source="test reference"), tmp_path / "b.json")
    proto = make_protocol(
        tmp_path,
        mode="local-dp",
        mechanism="laplace",
        epsilon=5.0,
        delta=0.0,
        bounds={"file": "b.json", "sha256": sha},
        projection="random",
        dimension=4,
    )
    keys = keys_for(tmp_path)
    loaded = load_protocol(proto)
    featdir = make_featdir(tmp_path, settings)
    state = tmp_path / "st"
    release_site_features(
        featdir, accepted(loaded), keys["site-1"], keys["server_pub"], tmp_path / "o1", state
    )
    with pytest.raises(BudgetExceededError):  # 5 + 5 > 8: refused before any noise
        release_site_features(
            featdir, accepted(loaded), keys["site-1"], keys["server_pub"], tmp_path / "o2", state
        )
    log = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log[-2:]] == ["budget-refused", "head"]
    res = CliRunner().invoke(app, ["audit", "verify", str(state), "--ledger", str(state),
                                   "--protocol", str(proto), "--key",
                                   str(tmp_path / "keys" / "site-1.pub.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "budget-refused 1" in res.output


def test_tampered_envelope_refuses_collection_and_writes_nothing(tmp_path: Path) -> None:
    proto = make_protocol(tmp_path)
    loaded = load_protocol(proto)
    featdir = make_featdir(tmp_path, loaded.protocol.radiomics.model_dump(mode="json"))
    keys = keys_for(tmp_path)
    release_all(tmp_path, proto, featdir, keys, tmp_path / "inbox")
    victim = tmp_path / "inbox" / "site-2.features.env"
    good = victim.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(CollectionRefused, match="site-2.features.env") as info:
        collect_features(
            tmp_path / "inbox",
            loaded,
            keys["server"],
            tmp_path / "collected",
            tmp_path / "server",
            site_public_keys=keys["site_pubs"],
        )
    assert info.value.exit_code == 3
    assert not (tmp_path / "collected").exists()
    victim.write_bytes(good)  # the guard did not advance: the genuine set still collects
    table = collect_features(
        tmp_path / "inbox",
        loaded,
        keys["server"],
        tmp_path / "collected",
        tmp_path / "server",
        site_public_keys=keys["site_pubs"],
    )
    assert len(table.subject_ids) == 18


def test_wrong_protocol_and_settings_are_refused(tmp_path: Path) -> None:
    proto = make_protocol(tmp_path)
    loaded = load_protocol(proto)
    featdir = make_featdir(tmp_path, loaded.protocol.radiomics.model_dump(mode="json"))
    keys = keys_for(tmp_path)
    release_all(tmp_path, proto, featdir, keys, tmp_path / "inbox")
    other = tomllib.loads(proto.read_text())
    other["training"]["lr"] = 0.01
    other_path = tmp_path / "other.toml"
    other_path.write_bytes(tomli_w.dumps(other).encode())
    with pytest.raises(CollectionRefused, match="SF156"):
        collect_features(
            tmp_path / "inbox",
            load_protocol(other_path),
            keys["server"],
            tmp_path / "c",
            tmp_path / "server",
            site_public_keys=keys["site_pubs"],
        )
    other["radiomics"]["bin_width"] = 0.05
    other_path.write_bytes(tomli_w.dumps(other).encode())
    with pytest.raises(ProtocolError, match="other radiomics settings"):
        release_site_features(
            featdir,
            accepted(load_protocol(other_path)),
            keys["site-1"],
            keys["server_pub"],
            tmp_path / "x",
            tmp_path / "s",
        )


def test_unknown_site_and_wrong_server_key(tmp_path: Path) -> None:
    proto = make_protocol(tmp_path)
    loaded = load_protocol(proto)
    featdir = make_featdir(tmp_path, loaded.protocol.radiomics.model_dump(mode="json"))
    keys = keys_for(tmp_path)
    intruder = generate_keys("site", "site-9")
    with pytest.raises(ProtocolError, match="not a site of this protocol"):
        release_site_features(
            featdir,
            accepted(loaded),
            intruder,
            keys["server_pub"],
            tmp_path / "x",
            tmp_path / "s",
        )
    release_all(tmp_path, proto, featdir, keys, tmp_path / "inbox")
    # A collector that only knows sites 1 and 2 refuses site-3's envelope as an unknown sender.
    with pytest.raises(CollectionRefused, match="SF153"):
        collect_features(
            tmp_path / "inbox",
            loaded,
            keys["server"],
            tmp_path / "c",
            tmp_path / "server",
            site_public_keys=keys["site_pubs"][:2],
        )


def test_budget_error_is_a_privacy_error() -> None:
    assert issubclass(BudgetExceededError, PrivacyError)


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"subject_ids": [{"a": 1}]}, "is not a case folder name"),
        ({"subject_ids": ["../../etc"]}, "is not a case folder name"),
        ({"columns": ["flair_firstorder_Mean"]}, "released columns are not the protocol's"),
    ],
)
def test_collect_checks_ids_and_columns_against_the_protocol(
    tmp_path: Path, meta: dict, reason: str
) -> None:
    """A validly signed envelope whose content the protocol does not declare is refused as a
    whole (governance issue: columns against the protocol, subject ids validated)."""
    from securefed.transport import SendCounter, seal_message, write_message

    proto = make_protocol(tmp_path)
    loaded = load_protocol(proto)
    keys = keys_for(tmp_path)
    n_cols = 1 if "columns" in meta else len(COLUMNS)
    full = {"kind": "features", "site": "site-1", "partition_id": 1,
            "subject_ids": ["FeTS2022_01000"], "splits": ["train"], "columns": list(COLUMNS),
            "release": {"mode": "plain"}, "ledger": []} | meta  # fmt: skip
    envelope = seal_message(
        {"values": np.zeros((1, n_cols))}, sender=keys["site-1"], recipient=keys["server_pub"],
        protocol_hash=loaded.sha256, stage="features", counters=SendCounter(tmp_path / "c"),
        meta=full,
    )  # fmt: skip
    (tmp_path / "inbox").mkdir()
    write_message(tmp_path / "inbox" / "site-1.features.env", envelope)
    with pytest.raises(CollectionRefused, match=reason):
        collect_features(tmp_path / "inbox", loaded, keys["server"], tmp_path / "out",
                         tmp_path / "server", site_public_keys=keys["site_pubs"])  # fmt: skip
    assert not (tmp_path / "out").exists()
