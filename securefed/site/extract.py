"""Site role, feature stage: compute the protocol's radiomic features of the site's own cases
into its feature folder (FEATDIR: features.csv + manifest.json + a per-case cache).

Nothing leaves the site here: FEATDIR holds raw features and stays at the site; only a release
through the protocol (:mod:`securefed.site.release`) sends anything.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from securefed import __version__
from securefed.data import load_federation
from securefed.errors import NoCasesError, PartitionError
from securefed.protocol import LoadedProtocol
from securefed.radiomics import extract_features, save_table
from securefed.radiomics.cache import CACHE_DIR, pyradiomics_version

__all__ = ["SiteExtraction", "extract_site_features"]

ExtractProgress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class SiteExtraction:
    """What was written (counts only) and which cases were excluded, with the reason."""

    cases: int
    columns: int
    computed: int
    cached: int
    partitions: list[int]
    excluded: dict[str, str] = field(default_factory=dict)


def extract_site_features(
    loaded: LoadedProtocol,
    data: Path,
    out: Path,
    *,
    partitions: Collection[int] = (),
    workers: int = 1,
    strict: bool = False,
    progress: ExtractProgress | None = None,
) -> SiteExtraction:
    """Extract the features of the cases of ``partitions`` (default: every partition of the
    partition file) under ``data`` into ``out``. ``strict``: fail on the first bad case instead
    of excluding it. Raises PartitionError for an unknown partition id and NoCasesError when no
    case could be extracted."""
    proto = loaded.protocol
    spec = proto.radiomics
    fed = load_federation(data, partitioning=proto.data.partitioning)
    splits = fed.splits(
        seed=proto.data.split_seed,
        test_fraction=proto.data.test_fraction,
        val_fraction=proto.data.val_fraction,
    )
    known = set(fed.listed.values()) | set(fed.partition_of.values())
    wanted = set(partitions) if partitions else known
    unknown = sorted(wanted - known)
    if unknown:
        raise PartitionError(
            f"--partition {unknown[0]}: not a partition id of {proto.data.partitioning} in {data} "
            f"(known: {', '.join(str(p) for p in sorted(known))})"
        )
    cases = [c for s, c in sorted(fed.cases.items()) if fed.partition_of[s] in wanted]
    problems = [p for p in fed.problems if fed.listed.get(p.subject_id) in wanted or not fed.listed]
    excluded: dict[str, str] = {p.subject_id: str(p) for p in problems}
    result = extract_features(
        cases,
        spec,
        cache_dir=out / CACHE_DIR,
        partition_of=fed.partition_of,
        split_of=splits,
        workers=workers,
        progress=progress,
        on_error="raise" if strict else "exclude",
    )
    excluded.update(result.excluded)
    if len(result.table) == 0:
        raise NoCasesError(
            f"no case of partition(s) {sorted(wanted)} in {data} could be extracted; "
            f"excluded: {', '.join(sorted(excluded)) or 'none'}"
        )
    manifest = {
        "protocol_sha256": loaded.sha256,
        "settings": spec.model_dump(mode="json"),
        "pyradiomics_version": pyradiomics_version(),
        "securefed_version": __version__,
        "partitions": sorted(wanted),
        "content_keys": result.content_keys,
        "excluded": dict(sorted(excluded.items())),
        "bin_edges": None
        if result.edges is None
        else {m: list(e) for m, e in result.edges.items()},
        "site_local": "raw features: never send this folder; release through the protocol",
    }
    save_table(result.table, out, manifest)
    n, m = result.table.shape
    return SiteExtraction(n, m, result.computed, result.cached, sorted(wanted),
                          dict(sorted(excluded.items())))  # fmt: skip
