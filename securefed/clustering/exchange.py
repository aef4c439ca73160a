"""Server -> site: the fitted cluster model, sealed to each site as data (arrays + JSON).

What leaves the server: scaling bounds, PCA mean/components, cluster means, weights and precision
factors, the column names and the rule; no case's vector, cluster label or subject id. Each site
opens it (pinned server key, protocol hash, stage ``cluster-model``, fresh counter) and assigns its
own cases locally with plain numpy (``ClusterModel.assign``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from securefed.clustering.model import _ARRAYS, ClusterModel
from securefed.crypto import PrivateKeys, PublicKeys
from securefed.errors import EnvelopeError
from securefed.protocol import LoadedProtocol
from securefed.transport import (
    ReplayGuard,
    SendCounter,
    allowed_senders,
    open_message,
    seal_message,
)

__all__ = ["MODEL_STAGE", "open_cluster_model", "seal_cluster_model"]

MODEL_STAGE = "cluster-model"


def seal_cluster_model(
    model: ClusterModel,
    *,
    server_keys: PrivateKeys,
    site: PublicKeys,
    loaded: LoadedProtocol,
    counters: SendCounter,
) -> bytes:
    """The model sealed to one site (see module docstring for what it contains)."""
    arrays = {name: np.asarray(getattr(model, name), dtype="<f8") for name in _ARRAYS}
    meta = {
        "kind": "cluster-model",
        "rule": model.rule,
        "covariance_type": model.covariance_type,
        "columns": list(model.columns),
    }
    return seal_message(
        arrays,
        sender=server_keys,
        recipient=site,
        protocol_hash=loaded.sha256,
        stage=MODEL_STAGE,
        counters=counters,
        meta=meta,
    )


def open_cluster_model(
    envelope: bytes,
    *,
    site_keys: PrivateKeys,
    loaded: LoadedProtocol,
    state_dir: Path,
    server_public: tuple[PublicKeys, ...] = (),
) -> ClusterModel:
    """Verify and decode the server's model at a site."""
    msg = open_message(
        envelope,
        recipient=site_keys,
        senders=allowed_senders(loaded.protocol, "server", public_keys=server_public),
        protocol_hash=loaded.sha256,
        stage=MODEL_STAGE,
        guard=ReplayGuard(state_dir / "replay"),
    )
    meta = msg.meta
    if meta.get("kind") != "cluster-model" or set(msg.arrays) != set(_ARRAYS):
        raise EnvelopeError(f"{msg.sender}: not a cluster model (unexpected payload)")
    return ClusterModel(
        columns=list(meta["columns"]),
        rule=meta["rule"],
        covariance_type=meta["covariance_type"],
        meta={"protocol": loaded.sha256},
        **{name: np.array(msg.arrays[name]) for name in _ARRAYS},
    )
