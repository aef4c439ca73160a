"""`securefed federation coordinate`: the coordinator submits CFFL's phases to a running
SuperLink (deployment engine; docs/deployment.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, info, subgroup

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "federation", "Deployment: run the federated phases on a SuperLink.")
    group.command("coordinate")(coordinate)


@handle_errors
def coordinate(
    protocol: Annotated[Path, typer.Argument(help="The signed study protocol (deployment).")],
    assignments: Annotated[
        Path, typer.Option("--assignments", help="clusters.csv of the study (the phase plan).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Coordinator folder (checkpoints).")],
    superlink: Annotated[
        str, typer.Option("--superlink", help="HOST:PORT of the running SuperLink.")
    ],
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="Study CA certificate (TLS).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS: loopback pilots only.")
    ] = False,
    node_keys: Annotated[
        Path | None,
        typer.Option(
            "--node-keys",
            help="Folder of the sites' <site-id>.pub node keys to register (required in "
            "deployment).",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for each phase.")
    ] = 1800.0,
    he_context: Annotated[
        Path | None,
        typer.Option(
            "--he-context",
            help="bfv: the aggregator.ctx of the decrypting site's `site he-key deal` (no key).",
        ),
    ] = None,
) -> None:
    """Submit the global FedAvg phase, then one finetuning phase per cluster, to the SuperLink
    (each with `flwr run`), and wait for each; rerun to resume after the last completed round."""
    from securefed.protocol import load_protocol
    from securefed.study.coordinate import coordinate_deployment

    loaded = load_protocol(protocol)
    phases = coordinate_deployment(
        loaded, assignments, out, superlink=superlink, ca_cert=ca_cert, insecure=insecure,
        node_keys=node_keys, run_timeout_s=timeout, he_context=he_context,
    )  # fmt: skip
    g = phases.global_result
    info(f"global: best round {g.best_round} (pooled val Dice {g.best_score})")
    for c, outcome in phases.clusters.items():
        info(f"cluster {c}: {outcome.status} ({outcome.reason})")
    console.print(str(g.best_weights_path), highlight=False)
