"""Finding 8 of the privacy-claims issue: the privacy unit is the patient. A partition file's
Patient_ID column groups a patient's cases; splits keep them together; every DP computation
bounds a patient's contribution (local-dp: one released row per patient; secure clustering: at
most privacy.max_cases_per_patient points, sensitivity scaled; DP-SGD: batches of patients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.site import keys_for, local_dp_protocol, make_featdir

from securefed.clustering.secure import plan_secure_clustering
from securefed.data import read_patients
from securefed.data.splits import split_cases
from securefed.errors import PartitionError
from securefed.privacy.bounding import bounded_mask
from securefed.protocol import load_protocol, parse_protocol
from securefed.server.collect import collect_features
from securefed.site.release import release_site_features
from securefed.site.released import released_rows
from securefed.training.dpsgd import dp_batches
from securefed.trust import accept_unsigned_simulation as accepted


def test_patient_column_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("Partition_ID,Subject_ID,Patient_ID\n1,A,P1\n1,B,P1\n2,C,\n")
    assert read_patients(path) == {"A": "P1", "B": "P1", "C": "C"}
    path.write_text("Partition_ID,Subject_ID\n1,A\n")
    assert read_patients(path) == {}
    path.write_text("Partition_ID,Subject_ID,Patient_ID\n1,A,P1\n2,B,P1\n")
    with pytest.raises(PartitionError, match="line 3: patient P1 has cases in partitions 1"):
        read_patients(path)
    path.write_text("Partition_ID,Subject_ID,Patient_ID\n1,A,../x\n")
    with pytest.raises(PartitionError, match="line 2: Patient_ID"):
        read_patients(path)


def test_splits_keep_a_patients_cases_together_and_match_the_paper_without_patients() -> None:
    partition_of = {f"S{i:03d}": 1 + i % 2 for i in range(60)}
    assert split_cases(partition_of, 3) == split_cases(
        partition_of, 3, patient_of={s: s for s in partition_of}
    )
    patient_of = {s: f"P{int(s[1:]) // 6 * 2 + int(s[1:]) % 2}" for s in partition_of}
    splits = split_cases(partition_of, 3, patient_of=patient_of)
    for patient in set(patient_of.values()):
        assert len({splits[s] for s, p in patient_of.items() if p == patient}) == 1


@given(
    st.dictionaries(st.text("abc", min_size=1, max_size=3), st.sampled_from("PQRS"), min_size=1),
    st.integers(1, 3),
)
def test_bounded_mask_keeps_at_most_the_bound_and_depends_on_each_patient_only(
    patient_of: dict[str, str], limit: int
) -> None:
    ids = sorted(patient_of)
    keep = bounded_mask(ids, patient_of, limit)
    for patient in set(patient_of.values()):
        rows = [i for i, s in enumerate(ids) if patient_of[s] == patient]
        assert keep[rows].sum() == min(limit, len(rows))
    # Replacing patient P's cases leaves every other patient's kept cases unchanged.
    others = {s: p for s, p in patient_of.items() if p != "P"}
    neighbour = {**others, "zz1": "P", "zz2": "P"}
    kept = {s for s, k in zip(ids, keep, strict=True) if k and s in others}
    n_ids = sorted(neighbour)
    n_keep = bounded_mask(n_ids, neighbour, limit)
    assert kept == {s for s, k in zip(n_ids, n_keep, strict=True) if k and s in others}


def test_local_dp_release_sends_one_row_per_patient(tmp_path: Path) -> None:
    proto = local_dp_protocol(tmp_path)
    loaded = load_protocol(proto)
    featdir = make_featdir(tmp_path, loaded.protocol.radiomics.model_dump(mode="json"), sites=1)
    keys = keys_for(tmp_path)
    ids = [f"FeTS2022_01{i:03d}" for i in range(6)]
    patients = {ids[0]: "P", ids[1]: "P", ids[2]: "P"}  # one patient, three cases
    state = tmp_path / "state"
    result = release_site_features(featdir, accepted(loaded), keys["site-1"], keys["server_pub"],
                                   tmp_path / "inbox", state, patients=patients)  # fmt: skip
    assert result.cases == 4  # P once, plus the three single-case patients
    table = collect_features(
        tmp_path / "inbox", loaded, keys["server"], tmp_path / "col", tmp_path / "server",
        site_public_keys=keys["site_pubs"][:1],
    )  # fmt: skip
    assert sorted(table.subject_ids) == [ids[0], *ids[3:]]
    # The site assigns P's other cases on P's released row.
    rows = released_rows(state, loaded.sha256, ids, patients)
    assert np.array_equal(rows[1], rows[0])
    assert np.array_equal(rows[2], rows[0])


def test_secure_clustering_sensitivity_scales_with_the_bound() -> None:
    base = {"schema_version": 1, "study": {"name": "t", "mode": "simulation"},
            "privacy": {"total_epsilon": 4.0}}  # fmt: skip
    one = plan_secure_clustering(parse_protocol(base), 3)
    three = plan_secure_clustering(
        parse_protocol({**base, "privacy": {"total_epsilon": 4.0, "max_cases_per_patient": 3}}), 3
    )
    for kind in ("histogram", "stats"):
        assert three.sensitivity(kind) == pytest.approx(3 * one.sensitivity(kind))
        assert three.sigma(kind) == pytest.approx(3 * one.sigma(kind))


def test_dp_sgd_batches_sample_patients() -> None:
    groups = ["P", "P", "P", "Q", "R"]
    batches = dp_batches(5, 2, 400, seed=1, groups=groups)
    seen = set()
    for b in batches:
        assert len(b) == 2
        assert len({groups[i] for i in b}) == 2
        seen |= set(b)
    assert seen == set(range(5))  # every case of a patient can be drawn
    # P (3 cases) is drawn as often as Q or R: a patient, not a case, is the unit.
    counts = {p: sum(groups[i] == p for b in batches for i in b) for p in "PQR"}
    assert max(counts.values()) - min(counts.values()) < 120
