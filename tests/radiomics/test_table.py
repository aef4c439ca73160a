"""FeatureTable redaction and refusal; FEATDIR save/load round trip and tamper detection."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

from securefed.errors import DataError, FeatureError
from securefed.radiomics import FeatureTable, columns, load_table, read_manifest, save_table


def table(n: int = 3) -> FeatureTable:
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(n, 372)) * 10.0 ** rng.integers(-8, 8, size=(n, 372))
    return FeatureTable(
        [f"FeTS2022_{i:05d}" for i in range(n)],
        [1 + i % 2 for i in range(n)],
        ["train", "val", "test"][:n] if n <= 3 else ["train"] * n,
        columns(),
        vals,
    )


def test_repr_and_str_are_redacted():
    t = table()
    secret = repr(float(t.values[0, 0]))
    for text in (repr(t), str(t), f"{t}", f"{t:>20}"):
        assert "values redacted" in text
        assert secret not in text
        assert "FeTS2022" not in text


def test_pickle_copy_and_json_are_refused():
    t = table()
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(t, protocol=proto)
    with pytest.raises(TypeError):
        copy.deepcopy(t)
    with pytest.raises(TypeError):
        json.dumps(t)
    with pytest.raises(TypeError):
        json.dumps(t, default=vars)
    assert not hasattr(t, "__dict__")


def test_values_are_read_only_and_validated():
    t = table()
    with pytest.raises(ValueError):
        t.values[0, 0] = 1.0
    bad = np.zeros((1, 372))
    bad[0, 5] = np.nan
    with pytest.raises(FeatureError, match=f"case a, feature {columns()[5]} is not finite"):
        FeatureTable(["a"], [1], ["train"], columns(), bad)
    with pytest.raises(FeatureError, match="split 'dev'"):
        FeatureTable(["a"], [1], ["dev"], columns(), np.zeros((1, 372)))
    with pytest.raises(FeatureError, match="not unique"):
        FeatureTable(["a", "a"], [1, 1], ["train"] * 2, columns(), np.zeros((2, 372)))


def test_select_rows():
    t = table()
    sub = t.select([s != "test" for s in t.splits])
    assert sub.subject_ids == t.subject_ids[:2]
    np.testing.assert_array_equal(sub.values, t.values[:2])


def test_save_load_round_trip_is_exact(tmp_path):
    t = table(4)
    save_table(t, tmp_path / "feat", {"protocol_sha256": "sha256:" + "0" * 64})
    back, meta = load_table(tmp_path / "feat")
    assert back == t
    assert meta["columns"] == list(columns())
    assert meta["n_cases"] == 4
    assert meta["protocol_sha256"].startswith("sha256:")
    assert sorted(p.name for p in (tmp_path / "feat").iterdir()) == [
        "features.csv",
        "manifest.json",
    ]
    header = (tmp_path / "feat" / "features.csv").read_text().splitlines()[0]
    assert header.startswith("subject_id,partition_id,split,flair_firstorder_")


def test_tampered_or_missing_files_are_refused(tmp_path):
    save_table(table(), tmp_path)
    csv = tmp_path / "features.csv"
    csv.write_text(csv.read_text().replace("train", "test", 1))
    with pytest.raises(DataError, match="features.csv: does not match manifest.json"):
        load_table(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json: missing; run `securefed features extract"):
        read_manifest(tmp_path)
