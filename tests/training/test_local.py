"""Local loops: preprocessing and caching, training, evaluation, weights round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.training import EVAL, SHAPE, SPEC, tiny_case, volumes, write_case

from securefed.errors import CaseError, TrainingError
from securefed.models import build_model
from securefed.protocol.schema import TrainingSpec
from securefed.training.datasets import clear_cache
from securefed.training.local import (
    evaluate_local,
    get_weights,
    prepare_cases,
    prepare_volumes,
    set_weights,
    train_local,
)


def test_prepare_volumes_layout() -> None:
    (item,) = prepare_volumes(volumes(1), SPEC)
    assert item["image"].dtype == torch.float32
    assert item["image"].shape[0] == 4
    assert item["label"].dtype == torch.uint8
    assert item["label"].shape[0] == 3
    assert item["image"].shape[1:] == item["label"].shape[1:]
    tc, wt, et = (item["label"][c].bool() for c in range(3))
    assert et.any()
    assert (et <= tc).all()
    assert (tc <= wt).all()
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
    assert first["num_examples"] == 3
    assert first["steps"] == 4
    train_local(model, data, SPEC, epochs=10, max_steps=12, lr=0.003, device="cpu", seed=1)
    last = train_local(model, data, SPEC, epochs=2, max_steps=None, lr=0.003, device="cpu", seed=2)
    assert last["loss"] < first["loss"]
    result = evaluate_local(model, data[:2], EVAL, device="cpu")
    assert result["num_examples"] == 2
    assert len(result["cases"]) == 2
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
    assert empty["num_examples"] == 0
    assert empty["steps"] == 0
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
    from securefed.training.local import make_loss

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
