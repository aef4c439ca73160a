"""A DP-SGD study protocol template and a site task on tiny in-memory cases."""

from __future__ import annotations

import hashlib

import numpy as np

from securefed.data import CaseVolumes
from securefed.federation.task import default_task
from securefed.training.local import prepare_volumes

SHAPE = (16, 16, 16)
PROTOCOL = """schema_version = 1
[study]
name = "dpsgd-test"
mode = "simulation"
[privacy]
total_epsilon = 4.0
total_delta = 1e-5
[clustering]
k = 2
k_selection = "fixed"
k_min = 2
k_max = 2
[training]
optimizer = "sgd"
lr = 0.05
batch_size = 2
crop_size = [16, 16, 16]
global_rounds = {rounds}
finetune_rounds = {finetune}
local_steps = 1
aggregation = "fedavg"
[training.dp_sgd]
enabled = {enabled}
epsilon = 3.0
delta = 1e-6
max_grad_norm = 1.0
population = 8
[evaluation]
roi_size = [16, 16, 16]
"""
LAYOUT = {1: [("train", 0), ("train", 0), ("train", 1), ("val", 0)]}


def dp_case(sid: str) -> CaseVolumes:
    rng = np.random.default_rng(int(hashlib.sha256(sid.encode()).hexdigest()[:8], 16))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    c = np.array(SHAPE)[:, None, None, None] / 2 + rng.integers(-2, 3, (3, 1, 1, 1))
    r = np.sqrt(((grid - c) ** 2).sum(0))
    label = np.where(r < 3, 1, np.where(r < 5, 2, 0)).astype(np.uint8)
    image = rng.normal(1.0, 0.1, (4, *SHAPE)).astype(np.float32) + (label > 0)
    return CaseVolumes(sid, image, label, np.eye(4), (1.0, 1.0, 1.0))


def dp_task():
    base = default_task()

    def load_data(data_dir, partition_id, subject_ids, spec):
        return prepare_volumes([dp_case(s) for s in subject_ids], spec)

    return type(base)(**{**base.__dict__, "load_data": load_data})
