"""Study stage 1, features: each site extracts its radiomics (site-local), protects and seals its
release to the server; the server collects (plain / local-dp). In secure-aggregate mode, and for
unseen institutions, nothing per-case is released here."""

from __future__ import annotations

from securefed.radiomics import extract_features, save_table
from securefed.server.collect import collect_features
from securefed.site.release import release_site_features
from securefed.study.context import StudyContext
from securefed.trust import check_recipient, load_site_config

__all__ = ["run_features"]


def run_features(ctx: StudyContext) -> None:
    proto = ctx.loaded.protocol
    fed = ctx.federation
    cases = [c for _, c in sorted(fed.cases.items())]
    ctx.log(f"  {len(cases)} case(s) at {len(ctx.sites)} site(s); {fed.summary()}")
    progress = ctx.progress
    extraction = extract_features(
        cases,
        proto.radiomics,
        cache_dir=ctx.radiomics_cache or ctx.paths.root / "cache" / "radiomics",
        partition_of=fed.partition_of,
        split_of=ctx.splits,
        workers=ctx.workers,
        on_error="exclude",
        progress=(
            None
            if progress is None
            else lambda stage, done, total, _sid: progress(f"radiomics ({stage})", done, total)
        ),
    )
    for sid, why in sorted(extraction.excluded.items()):
        ctx.log(f"  excluded {sid}: {why}")
    table = extraction.table
    settings = proto.radiomics.model_dump(mode="json")
    keys = ctx.keys()
    server = proto.server.id
    inbox = ctx.paths.server / "inbox"
    for site in ctx.sites:
        own = table.partition(site.partition_id)
        if not len(own):
            ctx.log(f"  {site.id}: no extractable case")
            continue
        featdir = ctx.paths.site_features(site.id)
        save_table(own, featdir, {"settings": settings, "excluded": extraction.excluded})
        if proto.release.mode == "secure-aggregate" or site.partition_id in ctx.held_out:
            continue  # no per-case release (secure mode) / unseen institution: nothing sent
        if site.id in ctx.site_configs:  # the site seals only to a server key it allows
            check_recipient(
                load_site_config(ctx.site_configs[site.id]),
                keys.public[server].encryption_fingerprint,
            )
        release_site_features(
            featdir,
            ctx.accepted_by(site.id),
            keys.private[site.id],
            keys.public[server],
            inbox,
            ctx.paths.site(site.id),
            unsafe_seed=ctx.unsafe_seed(),
            patients=ctx.federation.patient_of,
        )
    if proto.release.mode != "secure-aggregate":
        collected = collect_features(
            inbox,
            ctx.loaded,
            keys.private[server],
            ctx.paths.server_features,
            ctx.paths.server,
            site_public_keys=tuple(keys.public[s.id] for s in ctx.sites),
        )
        ctx.log(
            f"  server collected {len(collected.subject_ids)} case(s) x "
            f"{len(collected.columns)} values from {len(collected.senders)} site(s) "
            f"(release mode {proto.release.mode})"
        )
