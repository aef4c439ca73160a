"""Site role, clustering stage: open the server's sealed cluster model and assign the site's own
cases (train, val and test) locally.

Nothing leaves the site here. The site maps its own raw vectors into the released columns and
units without noise (:func:`securefed.privacy.protection.release_space`), or, with
``on_release`` (a ``local-dp`` protocol, securefed.protocol.egress), takes the noised vectors it
released (:mod:`securefed.site.released`), and applies the model with plain numpy
(:meth:`securefed.clustering.model.ClusterModel.assign`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.clustering.exchange import open_cluster_model
from securefed.crypto import PrivateKeys, PublicKeys
from securefed.errors import InternalError
from securefed.privacy.protection import release_space
from securefed.radiomics.table import FeatureTable
from securefed.site.released import released_rows
from securefed.trust import AcceptedProtocol

__all__ = ["SiteAssignment", "assign_own_cases"]


@dataclass(frozen=True)
class SiteAssignment:
    """The cluster of each of the site's cases (site-local) and their embedded coordinates (for
    the simulation's plots only)."""

    labels: np.ndarray
    embedding: np.ndarray


def assign_own_cases(
    envelope: bytes,
    table: FeatureTable,
    *,
    site_keys: PrivateKeys,
    accepted: AcceptedProtocol,
    state_dir: Path,
    server_public: tuple[PublicKeys, ...] = (),
    on_release: bool = False,
    patients: Mapping[str, str] | None = None,
) -> SiteAssignment:
    """Verify and open ``envelope`` (pinned server key, protocol, stage, replay guard under
    ``state_dir``), then assign every row of the site's own ``table``: on its raw vectors, or
    (``on_release``) on the vectors the site released under ``state_dir``, so that the clusters
    it then trains in are a function of its release only. ``accepted``: the protocol as this
    site accepted it (securefed.trust)."""
    if not isinstance(accepted, AcceptedProtocol):
        raise InternalError("assign_own_cases: the protocol was not accepted by the site")
    loaded = accepted.loaded
    model = open_cluster_model(
        envelope,
        site_keys=site_keys,
        loaded=loaded,
        state_dir=state_dir,
        server_public=server_public,
    )
    if on_release:
        x = released_rows(state_dir, loaded.sha256, list(table.subject_ids), patients)
    else:
        x = release_space(loaded, tuple(table.columns), np.asarray(table.values))
    return SiteAssignment(model.assign(x), model.embed(x))
