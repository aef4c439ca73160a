"""`securefed federation run|coordinate`: the coordinator drives the whole study (run) or CFFL's
training phases only (coordinate) on a running SuperLink (deployment engine;
docs/deployment.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import console, handle_errors, info, subgroup

__all__ = ["register"]

# The connection options `run` and `coordinate` share.
ProtocolArg = Annotated[Path, typer.Argument(help="The signed study protocol (deployment).")]
SuperlinkOption = Annotated[
    str, typer.Option("--superlink", help="HOST:PORT of the running SuperLink.")
]
CaCertOption = Annotated[Path | None, typer.Option("--ca-cert", help="Study CA certificate (TLS).")]
InsecureOption = Annotated[
    bool, typer.Option("--insecure", help="No TLS: loopback pilots of simulation protocols.")
]
NodeKeysOption = Annotated[
    Path | None,
    typer.Option(
        "--node-keys",
        help="Folder of the sites' <site-id>.pub node keys to register (required in deployment).",
    ),
]
HeContextOption = Annotated[
    Path | None,
    typer.Option(
        "--he-context",
        help="bfv: the aggregator.ctx of the decrypting site's `site he-key deal` (no key).",
    ),
]


def register(app: typer.Typer) -> None:
    group = subgroup(
        app,
        "federation",
        "Deployment: the study (run) or its training phases (coordinate) on a SuperLink.",
    )
    group.command("coordinate")(coordinate)
    group.command("run")(run)


@handle_errors
def coordinate(
    protocol: ProtocolArg,
    assignments: Annotated[
        Path, typer.Option("--assignments", help="clusters.csv of the study (the phase plan).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Coordinator folder (checkpoints).")],
    superlink: SuperlinkOption,
    ca_cert: CaCertOption = None,
    insecure: InsecureOption = False,
    node_keys: NodeKeysOption = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for each phase.")
    ] = 1800.0,
    he_context: HeContextOption = None,
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


@handle_errors
def run(
    protocol: ProtocolArg,
    superlink: SuperlinkOption,
    out: Annotated[Path, typer.Option("--out", help="Coordinator folder (resumable).")],
    server_key: Annotated[
        Path,
        typer.Option("--server-key", help="The server's private key (`keys new --role server`)."),
    ],
    keys: Annotated[
        Path, typer.Option("--keys", help="Folder of the sites' <site-id>.pub.json public keys.")
    ],
    ca_cert: CaCertOption = None,
    node_keys: NodeKeysOption = None,
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help="File holding the key passphrase.")
    ] = None,
    insecure: InsecureOption = False,
    he_context: HeContextOption = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1.0, help="Seconds to wait for each stage's replies."),
    ] = 1800.0,
) -> None:
    """Run the whole study on the SuperLink: feature release, clustering with sealed model
    delivery (each site assigns its own cases), the global and per-cluster phases and the
    evaluation, every stage as Flower messages that each site answers under its own accepted
    protocol; writes OUT/results.json. Rerun to resume after the last completed stage."""
    from securefed.crypto.keys import read_passphrase
    from securefed.protocol import load_protocol
    from securefed.study.federation_run import CoordinatorKeys, run_federation_study

    loaded = load_protocol(protocol)
    passphrase = read_passphrase(passphrase_file) if passphrase_file is not None else None
    material = CoordinatorKeys.load(loaded, server_key, keys, passphrase)
    results = run_federation_study(
        loaded, out, superlink=superlink, ca_cert=ca_cert, node_keys=node_keys, keys=material,
        insecure=insecure, he_context=he_context, stage_timeout_s=timeout, log=info,
    )  # fmt: skip
    for method, res in results["methods"].items():
        test = res["test"]
        dice = test["dice_mean"]
        shown = "not released" if dice is None else f"{dice:.3f}"
        info(
            f"{method}: test Dice {shown} over {test['num_test']} case(s) at "
            f"{test['sites']} site(s)"
        )
    console.print(str(Path(out) / "results.json"), highlight=False)
