"""A global FedAvg model shared between studies whose global phase is the same (a sweep's points).

CFFL's global phase does not depend on the clusters, so sweep points that differ only in what
they release for clustering (the feature epsilon, the projection) train the same global model.
Its key is a SHA-256 over everything the phase depends on: the protocol's training, secure
aggregation, homomorphic and evaluation settings and data splits, what a site sends in training
(securefed.protocol.egress: FedAvg weights, validation), the phase configuration without its
paths and protocol hash, the (subject, partition, split) of every assigned case, the data folder
(its path and every file's size and modification time), the site task and the securefed
version. Phases with DP training are never shared: their noise and their ledger charges belong
to each study (a reused phase would charge no site's ledger).

A reused phase is a copy of the cached checkpoint folder (``state.json``, ``best.npz``,
``last.npz``); the study's ``phases.json`` says ``"reused": true`` and the sites' egress and
audit logs hold no global round (none was sent in that study). Tests:
``tests/study/test_global_cache.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

from securefed import __version__
from securefed.clustering.assignments import read_assignments
from securefed.federation.config import PhaseConfig
from securefed.federation.task import FlowerTask
from securefed.fileio import canonical_sha256
from securefed.protocol import LoadedProtocol
from securefed.protocol.egress import training_egress

__all__ = ["global_phase_key", "restore_global_phase", "store_global_phase"]

_REQUIRED = ("state.json", "last.npz")
_FILES = (*_REQUIRED, "best.npz")  # best.npz: only where validation picks a best round
_NOT_KEYED = {"out_dir", "protocol_hash", "assignments", "he_context"}


def _task_name(task: FlowerTask | None) -> str:
    """Which site task trains (securefed's own by default): its callables' qualified names."""
    if task is None:
        return "securefed-default"
    return ",".join(
        f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"
        for f in (getattr(task, field.name) for field in dataclasses.fields(task))
    )


def _data_fingerprint(root: Path) -> str:
    """Every file under the data folder by relative path, size and modification time: a folder
    whose images were replaced at the same path gets another key (hashing the images' bytes at
    every point would cost as much as reading them)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def global_phase_key(
    loaded: LoadedProtocol,
    cfg: PhaseConfig,
    assignments: Path,
    data_root: str,
    task: FlowerTask | None = None,
) -> str | None:
    """The sharing key of a global phase, or None when it must not be shared (DP training or
    bfv, whose keys each study deals itself)."""
    p = loaded.protocol
    if p.training.dp_training is not None or p.training.aggregation == "bfv":
        return None
    egress = training_egress(p)
    rows = sorted((a.subject_id, a.partition_id, a.split) for a in read_assignments(assignments))
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_KEYED}
    doc = {
        "securefed": __version__,
        "training": p.training.model_dump(mode="json"),
        "secure_aggregation": p.secure_aggregation.model_dump(mode="json"),
        "homomorphic": p.homomorphic.model_dump(mode="json"),
        "evaluation": p.evaluation.model_dump(mode="json"),
        "data": p.data.model_dump(mode="json"),
        "egress": [egress.weights, egress.train_loss, egress.validation],
        "phase": config,
        "cases": rows,
        "data_root": str(Path(data_root).resolve()),
        "data_files": _data_fingerprint(Path(data_root)),
        "task": _task_name(task),
    }
    return canonical_sha256(doc, prefix="", allow_nan=True, default=str)


def restore_global_phase(cache: Path, key: str, out_dir: Path) -> bool:
    """Copy a cached global phase into ``out_dir``; False when the cache does not hold it."""
    source = Path(cache) / key
    if not all((source / name).is_file() for name in _REQUIRED):
        return False
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    return True


def store_global_phase(cache: Path, key: str, out_dir: Path) -> None:
    """Keep a completed global phase under ``key`` (written to a temporary folder, then renamed:
    a killed sweep never leaves half an entry)."""
    out_dir = Path(out_dir)
    if not all((out_dir / name).is_file() for name in _REQUIRED):
        return
    target = Path(cache) / key
    if target.is_dir():
        return
    tmp = Path(cache) / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _FILES:
        if (out_dir / name).is_file():
            shutil.copyfile(out_dir / name, tmp / name)
    try:
        tmp.rename(target)
    except OSError:  # another process stored it first
        shutil.rmtree(tmp, ignore_errors=True)
