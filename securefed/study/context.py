"""What every stage of a simulated study shares: the protocol, the data, the run folder, the
sites and the run's settings. Built afresh on every (re)start from the data and RUNDIR."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefed.data import Federation, load_federation
from securefed.data.splits import Split
from securefed.errors import NoCasesError, ProtocolError
from securefed.protocol import LoadedProtocol
from securefed.protocol.schema import SiteSpec
from securefed.study.keys import StudyKeys, study_keys
from securefed.study.paths import StudyPaths
from securefed.trust import AcceptedProtocol, accept_unsigned_simulation

__all__ = ["Log", "Progress", "StudyContext"]

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


@dataclass
class StudyContext:
    """The shared, read-only inputs of the stages (each stage's outputs are files in RUNDIR)."""

    loaded: LoadedProtocol
    data_root: Path
    paths: StudyPaths
    federation: Federation
    splits: dict[str, Split]
    sites: tuple[SiteSpec, ...]
    truth: Path | None
    workers: int
    log: Log
    progress: Progress | None = None
    site_configs: dict[str, Path] = field(default_factory=dict)  # site id -> SITE.toml
    # site id -> the protocol as that site accepted it (its own trust and policy, each stage)
    accepted: dict[str, AcceptedProtocol] = field(default_factory=dict)
    radiomics_cache: Path | None = None  # shared feature cache (a sweep); default RUNDIR/cache
    global_model_cache: Path | None = None  # shared global phases (a sweep); None: not shared
    device: str = "cpu"  # the simulated sites' torch device (cuda: each a share of the GPU)

    @classmethod
    def build(
        cls,
        loaded: LoadedProtocol,
        data_root: Path,
        paths: StudyPaths,
        *,
        truth: Path | None,
        workers: int,
        log: Log,
        progress: Progress | None = None,
    ) -> StudyContext:
        proto = loaded.protocol
        fed = load_federation(data_root, partitioning=proto.data.partitioning, check="header")
        if not fed.cases:
            raise NoCasesError(f"{data_root}: no usable case ({fed.summary()})")
        splits = fed.splits(
            seed=proto.data.split_seed,
            test_fraction=proto.data.test_fraction,
            val_fraction=proto.data.val_fraction,
        )
        partitions = set(fed.listed.values()) | set(fed.partition_of.values())
        unknown = sorted(set(proto.data.held_out_partitions) - partitions)
        if unknown:
            raise ProtocolError(
                f"data.held_out_partitions: {unknown} are not partitions of "
                f"{proto.data.partitioning} in {data_root} (known: {sorted(partitions)})"
            )
        sites = proto.resolve_sites(sorted(set(fed.partition_of.values())))
        if truth is not None and not Path(truth).is_file():
            raise NoCasesError(f"--truth {truth}: file not found")
        return cls(loaded, data_root, paths, fed, splits, sites, truth, workers, log, progress)

    @property
    def held_out(self) -> set[int]:
        """Partitions of unseen institutions (no part in clustering fits or training)."""
        return set(self.loaded.protocol.data.held_out_partitions)

    def training_sites(self) -> list[SiteSpec]:
        return [s for s in self.sites if s.partition_id not in self.held_out]

    def site_of(self, partition_id: int) -> str:
        """The site id of a partition (the protocol's names, listed or simulated)."""
        for site in self.sites:
            if site.partition_id == partition_id:
                return site.id
        return f"partition-{partition_id}"

    def accepted_by(self, site_id: str) -> AcceptedProtocol:
        """The protocol as site ``site_id`` accepted it at the start of this stage; a study driven
        without the runner's acceptance (a test of one stage) accepts its simulation protocol
        unsigned, never a deployment one."""
        if site_id in self.accepted:
            return self.accepted[site_id]
        return accept_unsigned_simulation(self.loaded)

    def unsafe_seed(self) -> int | None:
        p = self.loaded.protocol.privacy
        return (p.unsafe_noise_seed or 0) if p.unsafe_seeded_noise else None

    def keys(self) -> StudyKeys:
        return study_keys(
            self.paths.keys, self.loaded.protocol.server.id, [s.id for s in self.sites]
        )

    def prepared(self, subject_ids: list[str]) -> list[dict[str, Any]]:
        """Preprocessed cases for training and evaluation (cached in-process)."""
        from securefed.training.datasets import prepare_cases

        cases = [self.federation.cases[s] for s in subject_ids]
        return prepare_cases(cases, self.loaded.protocol.training) if cases else []
