"""Plain-language summary of a protocol, for a governance board or `securefed protocol check`."""

from __future__ import annotations

import math

from securefed.protocol.egress import stage_epsilons, training_egress
from securefed.protocol.loader import LoadedProtocol
from securefed.protocol.schema import Protocol

__all__ = ["privacy_verdict", "summary_lines"]


def _eps(value: float | None) -> str:
    if value is None or math.isinf(value):
        return "inf (no differential privacy)"
    return f"{value:g}"


def privacy_verdict(protocol: Protocol) -> str:
    """One line on what is and is not private, stage by stage, from
    :func:`securefed.protocol.egress.stage_epsilons` (what a site's policy bounds): the effective
    epsilon (inf when any patient-derived value leaves without DP), the DP stages with their
    epsilon and what they spend of the declared budget, and what leaves without DP.

    The declared total is only ever named as the budget of the DP stages, never next to a plain
    release as if it bounded it."""
    dp_parts: list[str] = []
    plain_parts: list[str] = []
    dp_total = 0.0
    for stage in stage_epsilons(protocol):
        if stage.dp <= 0 and not stage.clear:
            continue  # nothing patient-derived (headers, the local evaluation)
        dp_total += stage.dp
        if stage.dp > 0:
            dp_parts.append(f"{stage.stage} (epsilon {stage.dp:g})")
            if stage.clear:
                plain_parts.append(f"{stage.stage} ({', '.join(stage.clear)})")
        elif stage.stage == "features":  # the paper's plain release
            plain_parts.append("features (plain)")
        elif stage.stage == "training":
            plain_parts.append("training (no DP training)")
        else:
            plain_parts.append(f"{stage.stage} (no DP)")
    total = protocol.privacy.total_epsilon
    _, delta = protocol.allocated_budget()
    declared = (
        "no budget declared"
        if math.isinf(total)
        else f"declared budget epsilon {total:g}, delta {protocol.privacy.total_delta:g} per site"
    )
    spend = min(dp_total, total)
    if not dp_parts:
        dp = f"DP: none ({declared}; no stage uses it)"
    elif math.isinf(total):
        dp = f"DP: {', '.join(dp_parts)}, epsilon {spend:g} in all ({declared})"
    else:
        dp = (
            f"DP: {', '.join(dp_parts)}, spending epsilon {spend:g} of the declared budget "
            f"{total:g} (delta {delta:g} of {protocol.privacy.total_delta:g})"
        )
    not_private = (
        f"not private (epsilon inf): {', '.join(plain_parts)}"
        if plain_parts
        else "not private: nothing patient-derived"
    )
    effective = "inf" if plain_parts else f"{spend:g}"
    return f"effective epsilon {effective}; {dp}; {not_private}"


def summary_lines(loaded: LoadedProtocol) -> list[str]:
    """One screen: what leaves each site, under what protection, and a last line (the verdict)
    on what is and is not private."""
    p = loaded.protocol
    rel = p.release
    lines = [
        f"study      {p.study.name} ({p.study.mode})",
        f"identity   {loaded.sha256}",
    ]
    if p.sites:
        lines.append(f"sites      {len(p.sites)} listed: " + ", ".join(s.id for s in p.sites))
    else:
        lines.append(f"sites      taken from {p.data.partitioning}.csv (simulation)")
    if p.data.held_out_partitions:
        lines.append(f"unseen     institutions {list(p.data.held_out_partitions)} held out")
    lines.append(
        f"privacy    unit={p.privacy.unit}, neighbours={p.privacy.neighbouring}, "
        f"accountant={p.privacy.accountant} (the budget: see the verdict below)"
    )
    if p.privacy.unsafe_seeded_noise:
        lines.append("           UNSAFE: noise from a seeded PRNG (simulation only, not private)")
    if rel.mode == "plain":
        what = "372 radiomic values per case, sealed in transit, NO DP (epsilon = inf)"
    elif rel.mode == "local-dp":
        what = (
            f"each case's vector clipped and noised at the site ({rel.mechanism}, "
            f"epsilon={_eps(rel.epsilon)}, delta={rel.delta:g})"
        )
    else:
        sec = p.clustering.secure
        what = (
            f"no per-case vector; DP aggregates under secure aggregation ({sec.algorithm}, "
            f"epsilon={_eps(sec.epsilon)}, delta={sec.delta:g}, >= {sec.min_sites_per_aggregate} "
            "sites per aggregate)"
        )
    lines.append(f"features   {what}")
    if rel.projection != "none":
        dim = len(rel.subset) if rel.projection == "subset" else rel.dimension
        lines.append(f"           lower-dimensional release: {rel.projection} ({dim or '?'} dims)")
    if rel.bounds is not None:
        lines.append(f"           bounds {rel.bounds.file} ({rel.bounds.sha256[:19]}...)")
    c = p.clustering
    k = (
        f"k={c.k}"
        if c.k_selection == "fixed"
        else f"k in [{c.k_min}, {c.k_max}] by {c.k_selection}"
    )
    lines.append(f"clustering {c.algorithm}, {k}, PCA({c.pca_components}), scaling={c.scaling}")
    t = p.training
    dps = t.dp_sgd
    cdp = t.client_dp
    dp = (
        f"DP-SGD epsilon={_eps(dps.epsilon)} (clip {dps.max_grad_norm:g}, amplification "
        f"{dps.amplification}, noise {dps.noise})" if dps.enabled else
        f"client-level DP epsilon={_eps(cdp.epsilon)} (distributed discrete Gaussian under "
        f"SecAgg+, update clip {cdp.clip_norm:g}, {cdp.max_colluding_sites} colluding site(s) "
        "tolerated)" if cdp.enabled else "no DP training"
    )  # fmt: skip
    model = "dp-unet" if dps.enabled else t.model
    lines.append(
        f"training   {model}, aggregation={t.aggregation}, {t.global_rounds} global + "
        f"{t.finetune_rounds} finetune rounds, {t.optimizer} lr={t.lr:g}, crop {t.crop_size}, {dp}"
    )
    lines.append(
        f"           >= {t.min_sites_per_aggregate} sites per aggregate; "
        f"baselines: {', '.join(t.baselines)}"
    )
    start = (
        f"public weights {t.initial_weights.file} ({t.initial_weights.sha256[:19]}...)"
        if t.initial_weights is not None
        else f"seeded initialisation (seed {t.seed})"
    )
    lines.append(f"           starts from {start}; trains {t.trainable} parameters")
    for i, line in enumerate(training_egress(p).describe()):
        lines.append(("egress     " if i == 0 else "           ") + line)
    lines.append(
        f"           reply timing: paced in {t.reply_slot_s:g} s slots"
        if t.reply_slot_s > 0
        else "           reply timing: not paced (training.reply_slot_s = 0; epsilon inf)"
    )
    sa = p.secure_aggregation
    if t.aggregation == "bfv":
        lines.append(
            f"bfv        {p.homomorphic.precision_bits}-bit fixed point in "
            f"+-{sa.clipping_range:g}, "
            f"decryptor {p.homomorphic.decryptor or 'lowest training partition'}, "
            f"timeout={sa.timeout_s:g}s"
        )
    else:
        lines.append(
            f"secagg+    shares={sa.num_shares}, threshold={sa.reconstruction_threshold}, "
            f"timeout={sa.timeout_s:g}s"
        )
    lines.append(f"verdict    {privacy_verdict(p)}")
    return lines


def supernode_readiness(protocol: Protocol) -> list[str]:
    """What a deployment still lacks before the sites' SuperNodes can run it (empty: nothing;
    a simulation protocol needs no SuperNode). `site supernode` refuses each of these."""
    if protocol.is_simulation:
        return []
    missing = [f"sites.{s.id}.node_key" for s in protocol.sites if s.node_key is None]
    if not protocol.governance.approved_apps:
        missing.append("governance.approved_apps (`securefed protocol app-hash`)")
    if not missing:
        return [f"supernode  ready: {len(protocol.sites)} node keys pinned, "
                f"{len(protocol.governance.approved_apps)} approved app bundle(s)"]  # fmt: skip
    return [f"supernode  NOT READY: missing {', '.join(missing)} (`site supernode` refuses)"]
