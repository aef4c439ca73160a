"""`securefed run` (a whole study, resumable) and `securefed demo` (synthetic federation + the
demo study)."""

from __future__ import annotations

import time
import webbrowser
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from securefed.cli._common import console, handle_errors, info, progress, state

__all__ = ["Stage", "register"]


class Stage(StrEnum):
    """`run --stop-after`: the study's stages, in order (securefed.study.runner.STAGES)."""

    features = "features"
    clustering = "clustering"
    training = "training"
    evaluation = "evaluation"
    report = "report"


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)


class _Bars:
    """A rich progress bar per task name (silent under --quiet)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.tasks: dict[str, object] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total)
        self.bar.update(self.tasks[name], completed=done, total=total)


def _quiet_flower() -> None:
    """Flower and Ray log every message at INFO; keep the demo readable unless --debug."""
    import logging
    import os

    if not state.debug:
        import warnings

        # Flower's deprecation notices for run_simulation repeat every phase; errors still show.
        os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")  # read at import, Ray actors too
        logging.getLogger("flwr").setLevel(logging.ERROR)
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\.")


def _summary(results: dict[str, Any]) -> None:
    methods = (results.get("segmentation") or {}).get("methods") or {}
    if not methods:
        return
    from rich.table import Table

    table = Table(title="Dice on test cases (mean)")
    for col in ("method", "TC", "WT", "ET", "mean", "cases"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, res in methods.items():
        m = res["mean"]
        label = name if res.get("private", True) else f"{name} (non-private)"
        table.add_row(
            label,
            *(f"{m[r]:.3f}" if m.get(r) is not None else "-" for r in ("TC", "WT", "ET", "mean")),
            str(res["n_cases"]),
        )
    console.print(table)
    quality = (results.get("clustering") or {}).get("quality") or {}
    if "ari_scanner" in quality:
        console.print(f"clustering: ARI vs scanner {quality['ari_scanner']:.3f}", highlight=False)


@handle_errors
def run(
    protocol: Annotated[
        Path, typer.Argument(help="Study protocol TOML (study.mode = 'simulation').")
    ],
    data: Annotated[
        Path, typer.Option("--data", help="FeTS2022-layout root with the partition file.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder (RUNDIR); rerun to resume.")],
    truth: Annotated[
        Path | None,
        typer.Option("--truth", help="truth.csv of a SYNTHETIC federation (evaluation only)."),
    ] = None,
    stop_after: Annotated[
        Stage | None,
        typer.Option("--stop-after", help="Stop after this stage (rerun to go on)."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-j", min=1, help="Processes for feature extraction.")
    ] = 2,
    site_configs: Annotated[
        Path | None,
        typer.Option(
            "--site-configs",
            help="Folder of <site id>.toml site configurations (`securefed site init`); the "
            "protocol must then be signed (PROTOCOL.sig). Default: the run plays the board.",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="Torch device of the simulated sites: cpu, cuda (each "
            "site an equal share of the GPU), cuda:N or auto (cuda when available).",
        ),
    ] = "auto",
) -> None:
    """Run the whole study: sites extract, protect and seal; the server collects and clusters;
    Flower trains FedAvg then CFFL per cluster; sites evaluate; RUNDIR/report.html. Resumes an
    interrupted run from its last completed stage."""
    from securefed.study.runner import run_study

    start = time.perf_counter()
    _quiet_flower()
    with progress(transient=True) as bar:
        results = run_study(
            protocol, data, out, truth=truth,
            stop_after=None if stop_after is None else stop_after.value, workers=workers,
            log=info, progress=_Bars(bar), site_configs=site_configs, device=device,
        )  # fmt: skip
    _summary(results)
    if (out / "report.html").exists():
        info(f"report: {out / 'report.html'} ({time.perf_counter() - start:.0f} s)")


_DEMO_OUT = Path("securefed-demo")


@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run folder to create/resume.")] = _DEMO_OUT,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="Study to run on the demo federation: a protocol file, or the name of a shipped "
            "one (demo, demo-all-methods: all six methods side by side, about 7 min). Its run "
            "folder is OUT/run-<name>.",
        ),
    ] = "demo",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic federation.")] = 0,
    workers: Annotated[
        int, typer.Option("--workers", "-j", min=1, help="Processes for synthesis/extraction.")
    ] = 2,
    open_report: Annotated[
        bool, typer.Option("--open", help="Open report.html in a browser.")
    ] = False,
) -> None:
    """Synthesize the demo federation into OUT/data and run protocols/demo.toml on it (SecAgg+ on)
    in OUT/run; another --protocol shares the data and gets its own run folder."""
    from securefed.study.demo import run_demo

    _check_demo_protocol(protocol)  # before minutes of synthesis
    start = time.perf_counter()
    _quiet_flower()
    with progress(transient=True) as bar:
        task = bar.add_task("synthetic cases", total=None, visible=False)

        def on_case(_sid: str) -> None:
            bar.update(task, visible=True, advance=1)

        run = run_demo(
            out, protocol, seed=seed, workers=workers, log=info, progress=_Bars(bar),
            on_case=on_case,
        )  # fmt: skip
    _summary(run.results)
    report = run.rundir / "report.html"
    info(f"demo finished in {time.perf_counter() - start:.0f} s; report: {report}")
    if run.is_default:
        info(f"all six methods side by side (about 7 min): securefed demo --out {out} "
             "--protocol demo-all-methods")  # fmt: skip
    if open_report:
        webbrowser.open(report.resolve().as_uri())


def _check_demo_protocol(name_or_file: str) -> None:
    """`demo --protocol`: resolve and parse the protocol before anything is synthesised. An
    unknown name is a ConfigError listing the shipped ones; an invalid file, or one that is not
    a simulation, a ProtocolError (both exit 2)."""
    import difflib

    from securefed.errors import ConfigError, ProtocolError
    from securefed.protocol import load_protocol
    from securefed.protocol.shipped import shipped_protocols
    from securefed.study.demo import demo_protocol

    path = demo_protocol(name_or_file)
    if not path.is_file():
        names = list(shipped_protocols())
        close = difflib.get_close_matches(name_or_file, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"--protocol {name_or_file!r}: neither a protocol file nor the name of a shipped "
            f"protocol{hint} (shipped: {', '.join(names)})"
        )
    if not load_protocol(path).protocol.is_simulation:
        raise ProtocolError(
            f"--protocol {name_or_file}: the demo runs a whole study on one machine and needs "
            "study.mode = 'simulation'"
        )
