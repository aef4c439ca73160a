"""Local loops: preprocessing and caching, training, evaluation, weights round trip."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from securefed.data import CaseFiles, CaseVolumes
from securefed.errors import CaseError, TrainingError
from securefed.federated.datasets import clear_cache
from securefed.federated.local import (
    evaluate_local,
    get_weights,
    prepare_cases,
    prepare_volumes,
    set_weights,
    train_local,
)
from securefed.models import build_model
from securefed.protocol.schema import EvaluationSpec, TrainingSpec

SHAPE = (28, 30, 24)
SPEC = TrainingSpec(
    optimizer="adam",
    lr=0.003,
    batch_size=2,
    crop_size=(16, 16, 16),
    crop_sampling="tumour-centred",
    tumour_crop_fraction=0.75,
    spacing_mm=2.0,
)
EVAL = EvaluationSpec(roi_size=(16, 16, 16), overlap=0.25, hd95=True)


def tiny_case(i: int) -> tuple[np.ndarray, np.ndarray]:
    """A brain ellipsoid with a nested tumour (edema 2 > core 1 > enhancing 4)."""
    rng = np.random.default_rng(i)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    centre = np.array(SHAPE)[:, None, None, None] / 2
    brain = (((grid - centre) / (np.array(SHAPE)[:, None, None, None] * 0.45)) ** 2).sum(0) < 1
    c = centre + rng.integers(-3, 4, size=3)[:, None, None, None]
    r = np.sqrt(((grid - c) ** 2).sum(0))
    label = np.zeros(SHAPE, np.uint8)
    label[r < 6] = 2
    label[r < 4] = 1
    label[(r >= 2.5) & (r < 3.5)] = 4
    label[~brain] = 0
    image = rng.normal(1.0, 0.05, (4, *SHAPE)).astype(np.float32)
    shift = {2: [1.0, -0.3, 0.2, 1.2], 1: [0.4, -0.5, 0.3, 0.6], 4: [0.5, -0.2, 2.0, 0.5]}
    for lab, s in shift.items():
        image[:, label == lab] += np.array(s, np.float32)[:, None]
    image[:, ~brain] = 0
    return image, label


def volumes(n: int) -> list[CaseVolumes]:
    out = []
    for i in range(n):
        image, label = tiny_case(i)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        out.append(CaseVolumes(f"case{i}", image, label, affine, (2.0, 2.0, 2.0)))
    return out


def write_case(root: Path, i: int, spacing: float = 1.0) -> CaseFiles:
    image, label = tiny_case(i)
    folder = root / f"FeTS2022_{i:05d}"
    folder.mkdir(parents=True)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    paths = {}
    for k, mod in enumerate(("flair", "t1", "t1ce", "t2")):
        paths[mod] = folder / f"{folder.name}_{mod}.nii.gz"
        nib.save(nib.Nifti1Image(image[k], affine), paths[mod])
    seg = folder / f"{folder.name}_seg.nii.gz"
    nib.save(nib.Nifti1Image(label, affine), seg)
    return CaseFiles(folder.name, folder, paths, seg)


def test_prepare_volumes_layout() -> None:
    (item,) = prepare_volumes(volumes(1), SPEC)
    assert item["image"].dtype == torch.float32 and item["image"].shape[0] == 4
    assert item["label"].dtype == torch.uint8 and item["label"].shape[0] == 3
    assert item["image"].shape[1:] == item["label"].shape[1:]
    tc, wt, et = (item["label"][c].bool() for c in range(3))
    assert et.any() and (et <= tc).all() and (tc <= wt).all()  # nested regions
    _, label = tiny_case(0)
    assert int(wt.sum()) == int((label > 0).sum())  # cropping keeps the whole tumour
    brain = item["image"][0] != 0
    assert abs(float(item["image"][0][brain].mean())) < 1e-3  # z-scored over brain voxels
    assert item["spacing"] == (2.0, 2.0, 2.0)
    assert len(item["fg_indices"]) == int(wt.sum())


def test_prepare_cases_resamples_caches_and_names_bad_case(tmp_path: Path) -> None:
    clear_cache()
    case = write_case(tmp_path, 0, spacing=1.0)
    (a,) = prepare_cases([case], SPEC)
    assert a["spacing"] == (2.0, 2.0, 2.0)
    assert a["image"].shape[1] <= SHAPE[0] // 2 + 5  # resampled from 1 mm to 2 mm
    (b,) = prepare_cases([case], SPEC)
    assert b is a  # served from the cache
    case.images["t1"].write_bytes(b"not a nifti")
    with pytest.raises(CaseError, match=case.subject_id):
        prepare_cases([case], SPEC)
    clear_cache()


def test_training_reduces_loss_and_evaluates() -> None:
    torch.manual_seed(0)
    data = prepare_volumes(volumes(3), SPEC)
    model = build_model(SPEC)
    first = train_local(model, data, SPEC, epochs=2, max_steps=None, lr=0.003, device="cpu", seed=0)
    assert first["num_examples"] == 3 and first["steps"] == 4  # ceil(3 / 2) per epoch
    train_local(model, data, SPEC, epochs=10, max_steps=12, lr=0.003, device="cpu", seed=1)
    last = train_local(model, data, SPEC, epochs=2, max_steps=None, lr=0.003, device="cpu", seed=2)
    assert last["loss"] < first["loss"]
    result = evaluate_local(model, data[:2], EVAL, device="cpu")
    assert result["num_examples"] == 2 and len(result["cases"]) == 2
    assert {"subject_id", "dice_tc", "dice_wt", "dice_et", "hd95_wt"} <= set(result["cases"][0])
    assert 0.0 <= result["means"]["dice_wt"] <= 1.0


def test_training_is_seeded_and_capped() -> None:
    data = prepare_volumes(volumes(2), SPEC)
    runs = []
    for _ in range(2):
        model = build_model(SPEC)
        out = train_local(model, data, SPEC, epochs=5, max_steps=2, lr=0.003, device="cpu", seed=7)
        assert out["steps"] == 2
        runs.append(get_weights(model))
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(*runs, strict=True))


def test_training_without_cases_or_labels() -> None:
    model = build_model(SPEC)
    empty = train_local(model, [], SPEC, epochs=1, max_steps=None, lr=0.003, device="cpu", seed=0)
    assert empty["num_examples"] == 0 and empty["steps"] == 0
    (item,) = prepare_volumes(volumes(1), SPEC)
    with pytest.raises(TrainingError, match="case0"):
        train_local(model, [{**item, "label": None}], SPEC, epochs=1, max_steps=1, lr=0.01, seed=0)


def test_weights_round_trip_and_mismatch() -> None:
    a, b = build_model(TrainingSpec(seed=1)), build_model(TrainingSpec(seed=2))
    set_weights(b, get_weights(a))
    assert all((x == y).all() for x, y in zip(get_weights(a), get_weights(b), strict=True))
    weights = get_weights(a)
    with pytest.raises(TrainingError, match="arrays"):
        set_weights(b, weights[:-1])
    weights[0] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(TrainingError, match="shape"):
        set_weights(b, weights)


def test_dice_bce_penalises_false_positives_in_an_empty_crop():
    """Per-sample sigmoid Dice is saturated when the target is empty (almost no gradient against
    false positives); the cross-entropy term of "dice-bce" is not."""
    from securefed.federated.local import make_loss

    target = torch.zeros(1, 3, 8, 8, 8)
    grads = {}
    for name in ("dice", "dice-bce"):
        logits = torch.full((1, 3, 8, 8, 8), 1.0, requires_grad=True)  # p = 0.73 everywhere
        make_loss(TrainingSpec(loss=name))(logits, target).backward()
        grads[name] = float(logits.grad.abs().mean())
    assert grads["dice"] < 1e-6
    assert grads["dice-bce"] > 1e-4
    with pytest.raises(TrainingError, match="unknown loss"):
        make_loss(type("Spec", (), {"loss": "focal"})())
