"""`securefed pilot`: a study as a deployment on this machine (study CA, SuperLink, one SuperNode
per site, the coordinator driving every stage; securefed.study.pilot)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, info

__all__ = ["register"]


class Network(StrEnum):
    """``--network``: the pilot's network (securefed.study.pilot_network)."""

    auto = "auto"
    netns = "netns"
    loopback = "loopback"


def register(app: typer.Typer) -> None:
    app.command("pilot")(pilot)


@handle_errors
def pilot(
    out: Annotated[Path, typer.Option("--out", help="Pilot folder (every party's files).")],
    protocol: Annotated[
        str, typer.Option("--protocol", help="A shipped protocol name or a protocol file.")
    ] = "demo",
    sites: Annotated[
        int | None,
        typer.Option("--sites", min=2, help="Sites (the first N institutions); default: all."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for each stage's replies.")
    ] = 1800.0,
    network: Annotated[
        Network,
        typer.Option(
            "--network",
            help="auto: each site in its own network namespace and address where the machine "
            "allows it (root, iproute2), else loopback; netns: namespaces or exit 2; loopback.",
        ),
    ] = Network.auto,
) -> None:
    """Run the study as a deployment on this machine: the synthetic federation split into one
    data folder per site, keys, a study CA, a signed deployment protocol, a SuperLink and one
    SuperNode per site as separate processes, and the coordinator driving every stage over
    the network (`securefed federation run`). Writes OUT/study/results.json; exit 4 when a
    party's audit log does not verify. Rerun to resume."""
    from securefed.errors import EXIT_AUDIT_FINDING
    from securefed.study.pilot import run_pilot

    result = run_pilot(out, protocol, sites=sites, stage_timeout_s=timeout,
                       network=network.value, log=info)  # fmt: skip
    for method, res in result.results["methods"].items():
        test = res["test"]
        dice = test["dice_mean"]
        shown = "not released" if dice is None else f"{dice:.3f}"
        info(f"{method}: test Dice {shown} over {test['num_test']} case(s)")
    console.print(str(Path(out) / "study" / "results.json"), highlight=False)
    if any(not verdict.startswith("verified") for verdict in result.audit.values()):
        raise typer.Exit(EXIT_AUDIT_FINDING)
