"""A corpus of malformed protocols, each one field of protocols/demo.toml broken: every one is
refused and the error names the field (hostile-coordinator review: absurd floats such as
lr = 1e308 or an infinite learning rate passed `protocol check`)."""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from securefed.errors import ProtocolError
from securefed.protocol import parse_protocol

DEMO = tomllib.loads((Path(__file__).resolve().parents[2] / "protocols" / "demo.toml").read_text())

CORPUS: list[tuple[str, Any, str]] = [
    ("training.lr", 1e308, "lr"),
    ("training.lr", math.inf, "lr"),
    ("training.lr", math.nan, "lr"),
    ("training.lr", 0.0, "lr"),
    ("training.lr", -0.1, "lr"),
    ("training.finetune_lr", 1e308, "finetune_lr"),
    ("training.local_finetune_lr", math.inf, "local_finetune_lr"),
    ("training.weight_decay", 1e308, "weight_decay"),
    ("training.momentum", 1.0, "momentum"),
    ("training.server_lr", 1e308, "server_lr"),
    ("training.spacing_mm", 1e308, "spacing_mm"),
    ("training.batch_size", 0, "batch_size"),
    ("training.global_rounds", 0, "global_rounds"),
    ("training.local_steps", 0, "local_steps"),
    ("training.crop_size", [0, 24, 24], "crop_size"),
    ("training.crop_size", [24, 24], "crop_size"),
    ("training.tumour_crop_fraction", 1.5, "tumour_crop_fraction"),
    ("training.reply_slot_s", -1.0, "reply_slot_s"),
    ("training.reply_slot_s", math.inf, "reply_slot_s"),
    ("training.aggregation", "ckks", "aggregation"),
    ("training.optimizer", "lbfgs", "optimizer"),
    ("training.global_round", 3, "global_round"),
    ("secure_aggregation.clipping_range", 1e308, "clipping_range"),
    ("secure_aggregation.max_weight", math.inf, "max_weight"),
    ("secure_aggregation.timeout_s", 1e308, "timeout_s"),
    ("secure_aggregation.num_shares", 1, "num_shares"),
    ("privacy.total_epsilon", -1.0, "total_epsilon"),
    ("privacy.total_epsilon", math.nan, "total_epsilon"),
    ("privacy.neighbouring", "swap-one", "neighbouring"),
    ("privacy.unit", "record", "unit"),
    ("radiomics.bin_width", 1e308, "bin_width"),
    ("radiomics.bin_width", 0.0, "bin_width"),
    ("clustering.k", 0, "k"),
    ("clustering.percentile_low", 60.0, "percentile_low"),
    ("data.test_fraction", 1.0, "test_fraction"),
    ("data.val_fraction", -0.2, "val_fraction"),
    ("data.held_out_partitions", [0], "held_out_partitions"),
    ("data.split_seed", -1, "split_seed"),
    ("data.partitioning", "partitioning_3", "partitioning"),
    ("evaluation.roi_size", [8, 8], "roi_size"),
    ("study.mode", "production", "mode"),
    ("schema_version", 2, "schema_version"),
    ("unknown_table", {"x": 1}, "unknown_table"),
    ("training.client_dp", {"enabled": True, "epsilon": 2.0, "max_sites": 6}, "accountant"),
    ("training.dp_sgd", {"enabled": True, "epsilon": 1e308}, "epsilon"),
    ("training.dp_sgd", {"enabled": True, "epsilon": 2.0, "max_grad_norm": math.inf},
     "max_grad_norm"),
]  # fmt: skip


def _broken(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(DEMO)
    if path == "training.client_dp":  # client-level DP under the PLD accountant
        data["privacy"]["accountant"] = "pld"
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "field"), CORPUS, ids=[f"{p}={v!r}" for p, v, _ in CORPUS]
)
def test_every_malformed_protocol_is_refused_naming_its_field(
    path: str, value: Any, field: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_protocol(_broken(path, value))
    assert field in str(info.value)


def test_the_corpus_base_is_valid() -> None:
    assert parse_protocol(copy.deepcopy(DEMO)).study.name
