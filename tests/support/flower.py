"""A tiny stand-in site task for the Flower tests: a real torch model on small synthetic volumes
generated from the subject id (no files, no download). Failure injection: a site crashes in fit
from a given round when the file named by $SECUREFED_TEST_CRASH lists 'pid:round'."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from securefed.federation.task import FlowerTask

SHAPE = (8, 8, 8)
PROTOCOL = """schema_version = 1
[study]
name = "flower-test"
mode = "simulation"
[privacy]
total_epsilon = 1.0
[training]
optimizer = "sgd"
lr = 0.5
batch_size = 2
crop_size = [8, 8, 8]
global_rounds = {rounds}
finetune_rounds = {finetune}
finetune_lr = 0.2
local_steps = 3
aggregation = "{aggregation}"
min_sites_per_aggregate = {min_sites}
[secure_aggregation]
num_shares = 3
reconstruction_threshold = 2
timeout_s = {timeout}
[evaluation]
roi_size = [8, 8, 8]
"""


def write_protocol(
    folder: Path, *, rounds=2, finetune=1, aggregation="secagg+", min_sites=2, timeout=20
) -> Path:
    path = Path(folder) / "protocol.toml"
    path.write_text(
        PROTOCOL.format(
            rounds=rounds,
            finetune=finetune,
            aggregation=aggregation,
            min_sites=min_sites,
            timeout=timeout,
        )
    )
    return path


def write_assignments(path: Path, layout: dict[int, list[tuple[str, int]]]) -> Path:
    """layout: partition -> [(split, cluster), ...]; subject ids are generated."""
    lines = ["subject_id,partition_id,split,cluster"]
    for pid, rows in layout.items():
        for i, (split, cluster) in enumerate(rows):
            lines.append(f"S{pid:02d}_{i:03d},{pid},{split},{cluster}")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def _volume(sid: str):
    seed = int(hashlib.sha256(sid.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    label = np.zeros((3, *SHAPE), dtype=np.float32)
    c = rng.integers(2, 6, size=3)
    label[:, c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 1.0
    image = rng.normal(0, 0.3, size=(4, *SHAPE)).astype(np.float32) + label.sum(0, keepdims=True)
    return image, label


def build_model(spec):
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)
    )


def load_data(data_dir, partition_id, subject_ids, spec):
    out = []
    for sid in subject_ids:
        image, label = _volume(sid)
        out.append({"image": image, "label": label, "pid": partition_id, "subject_id": sid})
    return out


def train(model, data, spec, *, epochs, max_steps, lr, device, seed):
    import torch

    pid = int(data[0]["pid"])
    server_round = (seed - pid) // 1000  # the client seeds with 1000 * round + partition id
    crash = os.environ.get("SECUREFED_TEST_CRASH", "")
    if crash and Path(crash).is_file():
        for item in Path(crash).read_text().split():
            c_pid, c_round = (int(x) for x in item.split(":"))  # "pid:round"
            if c_pid == pid and server_round >= c_round:
                raise RuntimeError(f"site {pid} crashed in round {server_round} (test)")
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.tensor(np.stack([d["image"] for d in data]))
    y = torch.tensor(np.stack([d["label"] for d in data]))
    steps = max_steps or epochs
    loss = torch.tensor(0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
    return {"num_examples": len(data), "loss": float(loss.detach())}


def evaluate(model, data, eval_spec, device):
    import torch

    cases = []
    with torch.no_grad():
        for d in data:
            pred = (torch.sigmoid(model(torch.tensor(d["image"][None])))[0] > 0.5).numpy()
            dice: dict[str, Any] = {"subject_id": d.get("subject_id")}
            for i, r in enumerate(("tc", "wt", "et")):
                t, p = d["label"][i] > 0.5, pred[i]
                denom = t.sum() + p.sum()
                dice[f"dice_{r}"] = 1.0 if denom == 0 else float(2 * (t & p).sum() / denom)
            cases.append(dice)
    return {"cases": cases}


def get_weights(model):
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model, weights):
    import torch

    keys = list(model.state_dict().keys())
    model.load_state_dict({k: torch.tensor(w) for k, w in zip(keys, weights, strict=True)})


def make_task() -> FlowerTask:
    return FlowerTask(
        build_model=build_model,
        load_data=load_data,
        train=train,
        evaluate=evaluate,
        get_weights=get_weights,
        set_weights=set_weights,
    )
