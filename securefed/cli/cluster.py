"""`securefed cluster ...`: server-side clustering of the collected features (plain, local-dp) or
the simulated secure-aggregate clustering, with quality metrics and plots."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import (
    ProtocolArg,
    ProtocolOption,
    console,
    handle_errors,
    info,
    resolve_protocol,
)

__all__ = ["Embedding", "register"]


class Embedding(StrEnum):
    """2-D embedding of the cluster plots."""

    pca = "pca"
    tsne = "tsne"


def register(app: typer.Typer) -> None:
    app.command("cluster")(cluster)


@handle_errors
def cluster(
    features: Annotated[
        Path, typer.Option("--features", help="Collected features.csv (or its folder).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (model, clusters.csv, plots).")],
    protocol: ProtocolArg = None,
    protocol_option: ProtocolOption = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth", help="truth.csv of a SYNTHETIC federation: adds ARI/NMI vs scanner."
        ),
    ] = None,
    embedding: Annotated[
        Embedding, typer.Option("--embedding", help="2-D embedding for the plots.")
    ] = Embedding.pca,
    ledgers: Annotated[
        Path | None,
        typer.Option(
            "--ledgers",
            help="secure-aggregate simulation: folder of the site ledgers (default OUT/ledgers).",
        ),
    ] = None,
    unsafe_seed: Annotated[
        int | None,
        typer.Option(
            "--unsafe-seed",
            help="secure-aggregate simulation only: seeded, NOT private noise (needs the "
            "protocol's privacy.unsafe_seeded_noise).",
        ),
    ] = None,
) -> None:
    """Cluster FEATURES as PROTOCOL says; write the model, clusters.csv, quality.json, plots.

    plain / local-dp: the paper's pipeline fitted on train+val rows (local-dp: declared-bounds
    scaling). secure-aggregate: simulates the federated DP clustering with each partition's rows
    held by its site; the server-side outputs are the noised sums and the centroids."""
    from securefed.clustering.io import read_feature_table
    from securefed.protocol import load_protocol
    from securefed.study.cluster_collected import cluster_collected

    loaded = load_protocol(resolve_protocol(protocol, protocol_option))
    report = cluster_collected(
        loaded, read_feature_table(features), out, truth=truth, embedding=embedding.value,
        ledgers=ledgers, unsafe_seed=unsafe_seed,
    )  # fmt: skip
    info(
        f"{report['n_cases']} cases in {report['k']} clusters ({report['mode']}); "
        f"sizes {report['cluster_sizes']}"
    )
    for name, q in report.get("quality_tables", {}).items():
        console.print(f"ARI vs {name}: {q['ari']:.3f}  NMI: {q['nmi']:.3f}", highlight=False)
    info(f"wrote {out / 'clusters.csv'}, {out / 'quality.json'}, {out / 'plots'}")
