"""The layout of a study's run folder (RUNDIR)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["StudyPaths"]


@dataclass(frozen=True)
class StudyPaths:
    """Where each stage reads and writes inside RUNDIR."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def protocol(self) -> Path:
        return self.root / "protocol.toml"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def server(self) -> Path:
        return self.root / "server"

    @property
    def server_features(self) -> Path:
        return self.server / "features"

    @property
    def clustering(self) -> Path:
        return self.server / "clustering"

    @property
    def clusters(self) -> Path:
        return self.root / "clusters.csv"

    @property
    def training(self) -> Path:
        return self.root / "training"

    @property
    def phases(self) -> Path:
        return self.training / "phases.json"

    @property
    def baselines(self) -> Path:
        return self.training / "baselines"

    @property
    def per_case(self) -> Path:
        return self.root / "evaluation" / "per_case.csv"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def sites(self) -> Path:
        return self.root / "sites"

    def site(self, site_id: str) -> Path:
        """A site's private folder: features, ledger, counters, replay state."""
        return self.sites / site_id

    def site_features(self, site_id: str) -> Path:
        return self.site(site_id) / "features"
