"""Extraction over a site's cases: process pool, progress callback, cache, shared bin edges.

Workers (``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start method) receive only
file paths and settings, load and preprocess the case themselves, and write its vector to the
cache; the parent reads the vectors back from the cache, so raw values never cross a process
boundary in memory. With ``binning = "shared"`` a first pass records each case's masked intensity
range per modality (also cached), the site's shared edges are computed from them, and a second
pass extracts. Nothing here leaves the site: the result is the raw :class:`FeatureTable`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from securefed.errors import CaseError, FeatureError, InternalError, SecurefedError
from securefed.protocol.schema import MODALITIES, RadiomicsSpec
from securefed.radiomics import binning, cache
from securefed.radiomics.adapter import extract_preprocessed
from securefed.radiomics.names import columns as column_names
from securefed.radiomics.preprocess import Preprocessed, preprocess
from securefed.radiomics.table import FeatureTable

__all__ = [
    "CaseLike",
    "Extraction",
    "ProgressCallback",
    "case_ranges",
    "case_vector",
    "extract_features",
]

ProgressCallback = Callable[[str, int, int, str], None]
"""progress(stage, done, total, subject_id); stage is "scan" (shared edges) or "extract"."""

Edges = Mapping[str, tuple[float, ...]]


class CaseLike(Protocol):
    """What extraction needs of a case (securefed.data.CaseFiles satisfies it). Read-only members,
    so that frozen dataclasses (and any mapping of images) match."""

    @property
    def subject_id(self) -> str: ...

    @property
    def images(self) -> Mapping[str, Path]: ...

    @property
    def seg(self) -> Path | None: ...


@dataclass(repr=False)
class Extraction:
    """Result of :func:`extract_features` (site-local)."""

    table: FeatureTable
    content_keys: dict[str, str]
    excluded: dict[str, str] = field(default_factory=dict)
    edges: dict[str, tuple[float, ...]] | None = None
    computed: int = 0
    cached: int = 0

    def __repr__(self) -> str:
        return (
            f"Extraction({self.table!r}, excluded={len(self.excluded)}, computed={self.computed}, "
            f"cached={self.cached})"
        )


# -- one case, in memory ------------------------------------------------------------------------
def _preprocess(
    image: np.ndarray, label: np.ndarray | None, spec: RadiomicsSpec, subject_id: str
) -> Preprocessed:
    return preprocess(
        image, label, subject_id=subject_id, mask=spec.mask, normalisation=spec.normalisation
    )


def case_ranges(
    image: np.ndarray, label: np.ndarray | None, spec: RadiomicsSpec, *, subject_id: str
) -> dict[str, tuple[float, float]]:
    """Per-modality (min, max) of the normalised intensities inside the case's mask."""
    pre = _preprocess(image, label, spec, subject_id)
    return {m: binning.roi_range(pre.image[c][pre.mask]) for c, m in enumerate(MODALITIES)}


def case_vector(
    image: np.ndarray,
    label: np.ndarray | None,
    spacing: Sequence[float],
    spec: RadiomicsSpec,
    *,
    subject_id: str,
    edges: Edges | None = None,
) -> np.ndarray:
    """The case's feature vector (columns in :func:`securefed.radiomics.columns` order) from a
    (4, X, Y, Z) image; ``edges`` per modality when ``spec.binning == "shared"``."""
    if spec.binning == "shared" and edges is None:
        raise FeatureError(
            f"case {subject_id}: binning 'shared' needs the site's shared bin edges "
            "(use extract_features, which computes them over all of the site's cases)"
        )
    pre = _preprocess(image, label, spec, subject_id)
    use = edges if spec.binning == "shared" else None
    return extract_preprocessed(pre, spacing, spec=spec, subject_id=subject_id, edges=use)


# -- worker side --------------------------------------------------------------------------------
def _init_worker(threads: int) -> None:
    import SimpleITK as sitk

    from securefed.procs import die_with_parent

    die_with_parent()

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


def _task(
    stage: str,
    case: CaseLike,
    spec_data: dict[str, Any],
    cache_dir: str,
    content: str | None,
    edges: dict[str, tuple[float, ...]] | None,
) -> dict[str, Any]:
    """Run one case in a worker; returns only keys and error text (never feature values)."""
    from securefed.data import load_case

    sid = case.subject_id
    out: dict[str, Any] = {"subject_id": sid, "content": content, "cached": False, "error": None}
    try:
        spec = RadiomicsSpec.model_validate(spec_data)
        if content is None:
            files = dict(case.images)
            with_seg = spec.mask == "brain-without-tumour"
            if with_seg:
                if case.seg is None:
                    raise CaseError(
                        f"case {sid}: mask 'brain-without-tumour' needs a seg file, none found",
                        case=sid,
                    )
                files["seg"] = case.seg
            try:
                content = cache.content_key(files, with_seg=with_seg)
            except OSError as exc:
                raise CaseError(f"case {sid}: cannot read its files ({exc})", case=sid) from exc
            out["content"] = content
        cdir = Path(cache_dir)
        if stage == "scan":
            key = cache.ranges_key(content, spec)
            if cache.read_ranges(cdir, key) is not None:
                out["cached"] = True
            else:
                vols = load_case(case)  # type: ignore[arg-type]
                ranges = case_ranges(vols.image, vols.label, spec, subject_id=sid)
                cache.write_ranges(cdir, key, ranges)
            out["key"] = key
            return out
        cols = column_names(spec.feature_classes)
        key = cache.features_key(content, spec, edges)
        if cache.read_features(cdir, key, cols) is not None:
            out["cached"] = True
        else:
            vols = load_case(case)  # type: ignore[arg-type]
            vector = case_vector(
                vols.image, vols.label, vols.spacing, spec, subject_id=sid, edges=edges
            )
            cache.write_features(cdir, key, cols, vector)
        out["key"] = key
    except SecurefedError as exc:
        out["error"] = (type(exc).__name__, str(exc))
    except MemoryError as exc:
        out["error"] = ("MemoryError", f"case {sid}: out of memory ({exc}); use fewer workers")
    except Exception as exc:  # noqa: BLE001 - reported per case by the parent
        out["error"] = ("internal", f"case {sid}: {type(exc).__name__}: {exc}")
    return out


# -- parent side --------------------------------------------------------------------------------
def _raise(subject_id: str, error: tuple[str, str]) -> None:
    kind, message = error
    if kind == "CaseError":
        raise CaseError(message, case=subject_id)
    if kind in ("FeatureError", "MemoryError"):
        raise FeatureError(message)
    if kind == "internal":
        raise InternalError(message)
    raise FeatureError(message)  # another securefed user error, e.g. DataError from load_case


def _run_stage(
    stage: str,
    cases: Sequence[CaseLike],
    args: Callable[[CaseLike], tuple[Any, ...]],
    pool: ProcessPoolExecutor | None,
    progress: ProgressCallback | None,
) -> Iterable[dict[str, Any]]:
    total = len(cases)
    if pool is None:
        for i, case in enumerate(cases, start=1):
            result = _task(stage, case, *args(case))
            if progress is not None:
                progress(stage, i, total, case.subject_id)
            yield result
        return
    futures: list[Future[dict[str, Any]]] = [
        pool.submit(_task, stage, case, *args(case)) for case in cases
    ]
    try:
        for i, fut in enumerate(as_completed(futures), start=1):
            result = fut.result()
            if progress is not None:
                progress(stage, i, total, result["subject_id"])
            yield result
    except BrokenProcessPool as exc:
        raise InternalError(
            "a feature-extraction worker died (out of memory?); rerun with fewer --workers: "
            "finished cases are cached and will not be recomputed"
        ) from exc
    finally:
        for fut in futures:
            fut.cancel()


def extract_features(
    cases: Sequence[CaseLike],
    spec: RadiomicsSpec,
    *,
    cache_dir: Path,
    partition_of: Mapping[str, int],
    split_of: Mapping[str, str],
    workers: int = 1,
    progress: ProgressCallback | None = None,
    on_error: Literal["raise", "exclude"] = "raise",
) -> Extraction:
    """Extract every case (sorted by subject id) into a FeatureTable, using and filling the cache.

    ``workers`` > 1 runs a spawn process pool. ``on_error="exclude"`` drops a failing case from the
    table and reports it in ``Extraction.excluded`` (subject id -> message); ``"raise"`` raises the
    first failure (CaseError or FeatureError naming case, modality and feature). Site-local: the
    table is raw data and nothing is sent anywhere.
    """
    if workers < 1:
        raise FeatureError(f"workers must be >= 1, got {workers}")
    ordered = sorted(cases, key=lambda c: c.subject_id)
    missing = [
        c.subject_id
        for c in ordered
        if c.subject_id not in partition_of or c.subject_id not in split_of
    ]
    if missing:
        raise FeatureError(f"case {missing[0]}: no partition id or split given")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    spec_data = spec.model_dump(mode="json")
    cols = column_names(spec.feature_classes)
    contents: dict[str, str] = {}
    excluded: dict[str, str] = {}
    computed = cached = 0

    def collect(results: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        nonlocal computed, cached
        done: dict[str, dict[str, Any]] = {}
        for res in results:
            sid = res["subject_id"]
            if res["error"] is not None:
                if on_error == "raise":
                    _raise(sid, res["error"])
                excluded[sid] = res["error"][1]
                continue
            contents[sid] = res["content"]
            done[sid] = res
        return done

    pool: ProcessPoolExecutor | None = None
    if workers > 1 and len(ordered) > 1:
        n = min(workers, len(ordered))
        pool = ProcessPoolExecutor(
            max_workers=n,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(max(1, (os.cpu_count() or 1) // n),),
        )
    try:
        edges: dict[str, tuple[float, ...]] | None = None
        todo = list(ordered)
        if spec.binning == "shared":
            scanned = collect(
                _run_stage(
                    "scan",
                    todo,
                    lambda c: (spec_data, str(cache_dir), None, None),
                    pool,
                    progress,
                )
            )
            todo = [c for c in todo if c.subject_id in scanned]
            if todo:
                ranges = [cache.read_ranges(cache_dir, scanned[c.subject_id]["key"]) for c in todo]
                if any(r is None for r in ranges):
                    raise InternalError(f"{cache_dir}: a cached intensity range vanished; rerun")
                edges = {
                    m: binning.shared_edges((r[m] for r in ranges if r), spec.bin_width)
                    for m in MODALITIES
                }
        done = collect(
            _run_stage(
                "extract",
                todo,
                lambda c: (spec_data, str(cache_dir), contents.get(c.subject_id), edges),
                pool,
                progress,
            )
        )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    ids = [c.subject_id for c in ordered if c.subject_id in done]
    rows = []
    for sid in ids:
        vector = cache.read_features(cache_dir, done[sid]["key"], cols)
        if vector is None:
            raise InternalError(f"{cache_dir}: cached features of case {sid} vanished; rerun")
        rows.append(vector)
        if done[sid]["cached"]:
            cached += 1
        else:
            computed += 1
    matrix = np.vstack(rows) if rows else np.empty((0, len(cols)))
    table = FeatureTable(
        ids, [partition_of[s] for s in ids], [split_of[s] for s in ids], cols, matrix
    )
    return Extraction(
        table=table,
        content_keys={s: contents[s] for s in ids},
        excluded=excluded,
        edges=edges,
        computed=computed,
        cached=cached,
    )
