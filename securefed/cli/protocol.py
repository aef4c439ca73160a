"""`securefed protocol ...`: check, render and export the schema of study protocols."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from securefed.cli._common import ProtocolFileArg, console, handle_errors, subgroup
from securefed.protocol import LoadedProtocol

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "protocol", "Check, render, sign and verify study protocols.")
    group.command("check")(check)
    group.command("render")(render)
    group.command("schema")(schema)
    group.command("app-hash")(app_hash)


@handle_errors
def check(protocol: ProtocolFileArg) -> None:
    """Validate PROTOCOL; print its identity (sha256:<hex>) and a one-screen summary."""
    from securefed.protocol import load_protocol, summary_lines
    from securefed.protocol.pinned import check_pinned_files

    loaded = load_protocol(protocol)
    check_pinned_files(loaded)
    console.print(loaded.sha256, highlight=False)
    for line in summary_lines(loaded)[2:] + _privacy_lines(loaded) + _wire_lines(loaded):
        console.print(line, highlight=False, markup=False)


def _wire_lines(loaded: LoadedProtocol) -> list[str]:
    """The upload each site commits to per round (and, under bfv, its encryption time)."""
    from securefed.study.wire import estimate_upload

    est = estimate_upload(loaded.protocol)
    size = est["bytes_per_client_per_round"]
    line = (
        f"upload     {est['aggregation']}: {size / 1e6:.2f} MB per site and round "
        f"({size / est['fp32_bytes']:.2f}x the fp32 model of {est['values']:,} values)"
    )
    if est["sent_values"] != est["values"]:
        line += f"; only the {est['sent_values']:,} trained values are sent"
    lines = [line]
    if "encrypt_seconds_per_round" in est:
        two, one = est["bytes_two_per_slot"], est["bytes_one_per_slot"]
        lines += [
            f"           BFV: {two / 1e6:.2f} MB ({two / est['fp32_bytes']:.2f}x) when a phase's "
            f"FedAvg weights sum to <= {est['weight_sum_limit_two_per_slot']} (uniform weights), "
            f"else {one / 1e6:.2f} MB ({one / est['fp32_bytes']:.2f}x)",
            f"           encryption about {est['encrypt_seconds_per_round']:g} s per site and "
            "round on this machine",
        ]
    return lines


class BoardFormat(StrEnum):
    text = "text"
    md = "md"
    html = "html"


@handle_errors
def render(
    protocol: ProtocolFileArg,
    fmt: Annotated[
        BoardFormat, typer.Option("--format", help="text (default), md or html.")
    ] = BoardFormat.text,
    out: Annotated[Path | None, typer.Option("--out", help="Write to FILE instead.")] = None,
) -> None:
    """The board's document of PROTOCOL: per stage what leaves each site and how, epsilon and
    the derived noise, aggregation and minimum sizes, what the server learns, who can decrypt
    what, key fingerprints, what each party keeps; the protocol hash on every page."""
    from securefed.fileio import atomic_write_bytes
    from securefed.protocol import load_protocol, summary_lines
    from securefed.report.board import render_board

    loaded = load_protocol(protocol)
    body = render_board(loaded, fmt.value)
    if fmt is BoardFormat.text:
        body = "\n".join(summary_lines(loaded) + _privacy_lines(loaded)) + "\n\n" + body
    if out is not None:
        atomic_write_bytes(out, body.encode("utf-8"), mode=0o644)
        console.print(str(out), highlight=False, soft_wrap=True)
        return
    import sys

    sys.stdout.write(body)


def _privacy_lines(loaded: LoadedProtocol) -> list[str]:
    """Figures the protocol layer cannot compute itself (they need the DP accountant)."""
    from securefed.clustering.secure import collusion_lines

    if loaded.protocol.release.mode == "secure-aggregate":
        return collusion_lines(loaded.protocol)
    return []


@handle_errors
def schema() -> None:
    """Print the JSON Schema of a study protocol (also protocols/schema.json), generated from
    the schema's field descriptions."""
    import sys

    from securefed.protocol.reference import json_schema

    sys.stdout.write(json_schema())


@handle_errors
def app_hash() -> None:
    """Print the hash of this securefed's Flower app bundle (FAB), for the protocol's
    governance.approved_apps: sites run no other bundle."""
    from securefed.federation.site_executor import app_hash as compute

    console.print(compute(), highlight=False)
