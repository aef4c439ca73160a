"""Governance in a study run on one machine: every site accepts the protocol with its own trust and
policy before each of its stages (securefed.trust), as in a deployment.

With ``--site-configs DIR`` the operator's configurations are used (``DIR/<site id>.toml``) and the
protocol's signatures travel with it (``PROTOCOL.sig``, copied to ``RUNDIR/protocol.toml.sig``).
Without, the runner plays the board: it makes a governance key (``RUNDIR/keys``), signs the run's
copy of the protocol and writes each site a configuration (``RUNDIR/sites/<id>/site.toml``) that
trusts only that key, allows the run's server key and sets the policy to exactly what the
protocol asks (stages without DP allowed explicitly, ``allow_plain_stages``, when it has any),
so the real checks (signature, threshold, site id, recipient, policy) run on every stage of the
demo and of every simulated study.
"""

from __future__ import annotations

import math
from pathlib import Path

from securefed.crypto import (
    add_signature,
    generate_keys,
    load_private_keys,
    private_key_path,
    read_signatures,
    sign_protocol_hash,
    signature_path,
    trusted_signers,
    write_keys,
)
from securefed.errors import ConfigError, SiteTrustError
from securefed.protocol import LoadedProtocol
from securefed.protocol.egress import stage_epsilons
from securefed.study.context import StudyContext
from securefed.trust import (
    AcceptedProtocol,
    SiteConfig,
    SiteIdentity,
    SitePolicy,
    TrustSpec,
    load_site_config,
    verify_for_site,
    write_site_config,
)
from securefed.trust.audit_log import AuditLog

__all__ = [
    "GOVERNANCE_ID",
    "accept_protocol",
    "board_policy",
    "sign_stage_heads",
    "site_config_paths",
]

GOVERNANCE_ID = "study-governance"


def board_policy(loaded: LoadedProtocol, server_key: str) -> SitePolicy:
    """The policy the run, playing the board, gives each simulated site: exactly what the
    protocol asks, stages without DP allowed explicitly when it has any."""
    p = loaded.protocol
    sizes = [p.training.min_sites_per_aggregate]
    if p.release.mode == "secure-aggregate":
        sizes.append(p.clustering.secure.min_sites_per_aggregate)
    total = p.privacy.total_epsilon
    # A stage without DP (plain features, non-DP training, unpaced reply timing) is accepted
    # explicitly, never through the declared total (securefed.trust.policy.epsilon_violations).
    plain = any(math.isinf(s.epsilon) for s in stage_epsilons(p))
    return SitePolicy(
        max_total_epsilon=total if math.isfinite(total) else math.inf,
        allow_plain_stages=plain,
        forbidden_release_modes=(),
        required_aggregation=p.training.aggregation,
        min_sites_per_aggregate=min(sizes),
        require_dp_training=p.training.dp_training is not None,
        allowed_recipient_keys=(server_key,),
        allow_unsigned_simulation=False,
        require_version_pin=False,
    )


def _simulated(ctx: StudyContext) -> dict[str, Path]:
    """The runner as the board: governance key, signature and one config per site."""
    keys_dir = ctx.paths.keys
    if not private_key_path(keys_dir, GOVERNANCE_ID).exists():
        write_keys(generate_keys("governance", GOVERNANCE_ID), keys_dir)
    board = load_private_keys(private_key_path(keys_dir, GOVERNANCE_ID), role="governance")
    fp = board.public.signing_fingerprint
    sig = signature_path(ctx.paths.protocol)
    signed = sig.exists() and fp in trusted_signers(
        read_signatures(sig), ctx.loaded.sha256, frozenset({fp}), str(sig)
    )
    if not signed:
        add_signature(sign_protocol_hash(ctx.loaded.sha256, board), sig)
    server_key = ctx.keys().public[ctx.loaded.protocol.server.id].encryption_fingerprint
    out = {}
    for site in ctx.sites:
        path = ctx.paths.site(site.id) / "site.toml"
        config = SiteConfig(
            site=SiteIdentity(id=site.id),
            trust=TrustSpec(governance_keys=(fp,)),
            policy=board_policy(ctx.loaded, server_key),
        )
        # A run resumed from an older securefed may hold the board's config of its day (e.g.
        # without allow_plain_stages): the board's config is a function of the run's protocol,
        # keys and this securefed, so it is written again when it differs.
        if path.exists() and _written_config(path) != config:
            path.unlink()
        if not path.exists():
            write_site_config(config, path)
        out[site.id] = path
    return out


def _written_config(path: Path) -> SiteConfig | None:
    try:
        return load_site_config(path)
    except ConfigError:
        return None


def site_config_paths(ctx: StudyContext, site_configs: Path | None) -> dict[str, Path]:
    """Each site's configuration: ``site_configs/<id>.toml``, or the simulated board's."""
    if site_configs is None:
        return _simulated(ctx)
    out = {}
    for site in ctx.sites:
        path = Path(site_configs) / f"{site.id}.toml"
        if not path.is_file():
            raise ConfigError(
                f"--site-configs {site_configs}: no {path.name} for site {site.id}; write one "
                "with `securefed site init`"
            )
        out[site.id] = path
    return out


def accept_protocol(ctx: StudyContext, configs: dict[str, Path]) -> dict[str, AcceptedProtocol]:
    """Every site verifies the run's protocol with its own configuration (raises SiteTrustError
    naming the site and the failed check; the runner logs it and stops). On a refusal every
    site that wrote to its audit log here closes it with a signed head, so an honest site's
    log still verifies (`securefed audit verify`)."""
    accepted = {}
    logged: list[tuple[str, AuditLog]] = []
    for site_id, path in configs.items():
        config = load_site_config(path)
        if config.site.id != site_id:
            raise ConfigError(f"{path}: configuration of {config.site.id}, not of {site_id}")
        audit = AuditLog(ctx.paths.site(site_id), site_id, ctx.loaded.sha256)
        try:
            accepted[site_id] = verify_for_site(ctx.paths.protocol, config)
        except SiteTrustError as exc:
            audit.record("protocol-refused", code=exc.code)
            keys = ctx.keys()
            for party, log in [*logged, (site_id, audit)]:
                log.sign_head(keys.private[party])
            raise
        audit.record("protocol-accepted", signers=len(accepted[site_id].signers),
                     unsigned=accepted[site_id].unsigned)  # fmt: skip
        logged.append((site_id, audit))
    return accepted


def sign_stage_heads(ctx: StudyContext) -> None:
    """Close a stage in every party's audit log: each site and the server sign their head."""
    keys = ctx.keys()
    parties = [(s.id, ctx.paths.site(s.id)) for s in ctx.sites]
    parties.append((ctx.loaded.protocol.server.id, ctx.paths.server))
    for party, folder in parties:
        AuditLog(folder, party, ctx.loaded.sha256).sign_head(keys.private[party])
