"""``securefed sweep``: run every grid point as a whole study and collect the trade-offs.

Layout of ``OUT``: ``grid.json`` (the grid and base protocol hash), ``points/<id>/protocol.toml``
(the derived protocol, with the files it pins), ``points/<id>/run/`` (its study run: resumable
stage by stage), ``points/<id>/point.json`` (its row, written when the point is done: a rerun
skips it), ``cache/radiomics`` (the feature cache every point shares: keyed by file content and
radiomics settings), ``cache/global`` (global FedAvg phases shared by points whose global phase is
the same, securefed.study.global_cache), then ``sweep.csv``, ``sweep.json`` and ``report.html``.
"""

from __future__ import annotations

import shutil
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from securefed.errors import ConfigError, ProtocolError, SecurefedError
from securefed.fileio import read_json, write_json_atomic
from securefed.protocol import load_protocol
from securefed.sweep.collect import row_for
from securefed.sweep.grid import GridSpec, Point, expand, point_protocol
from securefed.sweep.report import write_outputs

__all__ = ["run_sweep"]

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def _write_point_protocol(
    base_path: Path, base: dict[str, Any], point: Point, folder: Path
) -> Path:
    data = point_protocol(base, point)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "protocol.toml"
    text = tomli_w.dumps(data)
    if not path.is_file() or path.read_text() != text:
        # A point without point.json whose protocol changed (a new securefed derives it
        # differently): its partial run belongs to the old protocol, so it starts over.
        shutil.rmtree(folder / "run", ignore_errors=True)
        path.write_text(text)
    release = data.get("release", {})
    initial = data.get("training", {}).get("initial_weights")
    for pinned in (release.get("bounds"), release.get("projection_file"), initial):
        if isinstance(pinned, dict) and "file" in pinned:
            source = base_path.parent / str(pinned["file"])
            target = folder / str(pinned["file"])
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_file():
                shutil.copyfile(source, target)
    return path


def run_sweep(
    protocol: Path,
    data: Path,
    truth: Path | None,
    out: Path,
    grid: GridSpec,
    *,
    log: Log = print,
    progress: Progress | None = None,
    workers: int = 1,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Run (or resume) every point of ``grid`` over ``protocol``; returns the rows (also in
    ``OUT/sweep.json``). A point that fails is recorded with its error and the sweep goes on."""
    from securefed.audit.features import run_feature_attacks
    from securefed.study.runner import run_study

    protocol, out = Path(protocol), Path(out)
    loaded = load_protocol(protocol)
    if not loaded.protocol.is_simulation:
        raise ProtocolError(f"{protocol}: a sweep runs simulation protocols only")
    base = tomllib.loads(protocol.read_text())
    out.mkdir(parents=True, exist_ok=True)
    meta = {"base_protocol": loaded.sha256, "grid": grid.model_dump(mode="json")}
    grid_file = out / "grid.json"
    if grid_file.is_file() and read_json(grid_file) != meta:
        raise ConfigError(
            f"{out}: holds a sweep of another protocol or grid; use a new --out (a sweep never "
            "mixes grids)"
        )
    write_json_atomic(grid_file, meta)
    points = expand(grid)
    rows: list[dict[str, Any]] = []
    for i, point in enumerate(points):
        if progress is not None:
            progress("grid points", i, len(points))
        folder = out / "points" / point.id
        done = folder / "point.json"
        if done.is_file():
            log(f"point {point.id}: done earlier, skipped")
            rows.append(read_json(done))
            continue
        try:
            path = _write_point_protocol(protocol, base, point, folder)
        except ProtocolError as exc:
            log(f"point {point.id}: skipped ({exc})")
            rows.append({**point.to_json(), "status": "skipped", "reason": str(exc)})
            continue
        log(f"point {i + 1}/{len(points)}: {point.id}")
        audit_s = 0.0
        try:
            run_study(
                path, data, folder / "run", truth=truth, workers=workers,
                log=lambda m: log(f"  {m}"), radiomics_cache=out / "cache" / "radiomics",
                global_model_cache=out / "cache" / "global", stop_after=grid.stop_after,
                device=device,
            )  # fmt: skip
            if grid.attacks and point.release != "secure-aggregate":
                start = time.perf_counter()
                run_feature_attacks(folder / "run", truth, data=data)
                audit_s = time.perf_counter() - start
        except SecurefedError as exc:
            log(f"point {point.id}: failed ({exc})")
            rows.append({**point.to_json(), "status": "failed", "reason": f"[{exc.code}] {exc}"})
            continue
        except Exception as exc:  # noqa: BLE001 - one point's bug must not lose the others
            log(f"point {point.id}: failed with an internal error ({type(exc).__name__}: {exc})")
            rows.append({**point.to_json(), "status": "failed",
                         "reason": f"internal error {type(exc).__name__}: {exc}"})  # fmt: skip
            continue
        row = row_for(point.to_json(), folder / "run", audit_s)
        write_json_atomic(done, row)
        rows.append(row)
    if progress is not None:
        progress("grid points", len(points), len(points))
    write_outputs(out, rows, meta)
    return rows
