"""`securefed demo`: the demo federation (synthesized once into OUT/data) and a study on it.

The shipped `demo` protocol runs in OUT/run; another protocol (a shipped name such as
`demo-all-methods`, or a file) shares the data and gets OUT/run-<name>."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefed.data import synth
from securefed.protocol.shipped import shipped_protocol, shipped_protocols
from securefed.study.context import Log, Progress
from securefed.study.runner import run_study

__all__ = ["DemoRun", "demo_protocol", "run_demo"]


@dataclass(frozen=True)
class DemoRun:
    """Where the demo ran and what it found."""

    rundir: Path
    is_default: bool
    results: dict[str, Any]


def demo_protocol(name_or_file: str) -> Path:
    """A protocol file, or the path of the shipped protocol of that name."""
    path = Path(name_or_file)
    if not path.is_file() and name_or_file in shipped_protocols():
        return shipped_protocol(name_or_file)
    return path


def run_demo(
    out: Path,
    protocol: str = "demo",
    *,
    seed: int = 0,
    workers: int = 2,
    log: Log = print,
    progress: Progress | None = None,
    on_case: Callable[[str], None] | None = None,
) -> DemoRun:
    """Synthesize OUT/data (the `demo` preset) unless it is there, then run (or resume)
    ``protocol`` on it with the synthetic truth for the clustering agreement."""
    path = demo_protocol(protocol)
    default = path.resolve() == shipped_protocol("demo").resolve()
    rundir = out / "run" if default else out / f"run-{path.stem}"
    data = out / "data"
    if not (data / "partitioning_1.csv").exists():
        log(f"synthesizing the demo federation into {data} ...")
        synth.synthesize(data, preset="demo", seed=seed, workers=workers, on_case=on_case)
    results = run_study(
        path, data, rundir, truth=data / "truth.csv", workers=workers, log=log, progress=progress
    )
    return DemoRun(rundir, default, results)
