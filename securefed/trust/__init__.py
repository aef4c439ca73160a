"""Site-held trust and policy: which governance keys a site trusts and what it allows a protocol
to ask of it, checked before any site-side work (securefed.trust.policy)."""

from securefed.trust.policy import (
    AcceptedProtocol,
    SiteConfig,
    SiteIdentity,
    SitePolicy,
    TrustSpec,
    accept_unsigned_simulation,
    check_recipient,
    epsilon_violations,
    load_site_config,
    policy_violations,
    site_state_folder,
    strictest_config,
    verify_for_site,
    write_site_config,
)

__all__ = [
    "AcceptedProtocol",
    "SiteConfig",
    "SiteIdentity",
    "SitePolicy",
    "TrustSpec",
    "accept_unsigned_simulation",
    "check_recipient",
    "epsilon_violations",
    "load_site_config",
    "policy_violations",
    "site_state_folder",
    "strictest_config",
    "verify_for_site",
    "write_site_config",
]
