"""Site-held trust and policy: the site configuration (``SITE.toml``) and the check every site-side
entry point runs before touching data (:func:`verify_for_site`).

The trust decision belongs to the site, never to whoever hands out the protocol: the site lists the
governance public keys it trusts (by fingerprint) and how many of them must sign, and sets its own
limits on what a protocol may ask of it. A protocol is accepted only when enough TRUSTED keys signed
its canonical hash (``PROTOCOL.sig``: one signature document or a list), it was approved for the
installed securefed version, and it satisfies the policy. Nothing here leaves the site.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from securefed import __version__
from securefed.errors import ConfigError, ProtocolSignatureError, SiteTrustError
from securefed.fileio import write_exclusive
from securefed.protocol import LoadedProtocol, load_protocol
from securefed.protocol.egress import stage_epsilons
from securefed.protocol.schema import Fingerprint, Protocol

__all__ = [
    "AcceptedProtocol",
    "SiteConfig",
    "SitePolicy",
    "check_recipient",
    "epsilon_violations",
    "load_site_config",
    "policy_violations",
    "strictest_config",
    "verify_for_site",
    "write_site_config",
]

ReleaseMode = Literal["plain", "local-dp", "secure-aggregate"]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )


class SiteIdentity(_Strict):
    """Who this site is."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """The site id of the protocol's [[sites]] entry (site-<partition> in a simulation)."""
    ledger_dir: str | None = Field(None, min_length=1, max_length=4096)
    """The site's state folder of this study (its privacy ledger); `site verify` then refuses a
    protocol under which the site's spend would start afresh."""
    key: str | None = Field(None, min_length=1, max_length=4096)
    """The site's private key file (`securefed keys new site ID`): its SuperNode signs its SecAgg+
    keys with it when the protocol pins the sites' signing keys (every deployment protocol)."""
    key_passphrase_file: str | None = Field(None, min_length=1, max_length=4096)
    """A file holding that key's passphrase (an encrypted key on an unattended SuperNode)."""


class TrustSpec(_Strict):
    """The governance keys this site trusts."""

    governance_keys: tuple[Fingerprint, ...] = Field(min_length=1, max_length=64)
    """Signing-key fingerprints (sha256:...) of the governance keys the site trusts
    (`securefed keys show GOV.pub.json`)."""
    threshold: int = Field(1, ge=1, le=64)
    """How many distinct trusted keys must have signed a protocol."""

    @model_validator(mode="after")
    def _threshold_fits(self) -> TrustSpec:
        if self.threshold > len(set(self.governance_keys)):
            raise ValueError(
                f"trust.threshold ({self.threshold}) exceeds the {len(set(self.governance_keys))} "
                "distinct trusted governance keys"
            )
        return self


class SitePolicy(_Strict):
    """The site's own limits on what any protocol may ask of it."""

    max_total_epsilon: float = Field(1.0, gt=0, allow_inf_nan=True)
    """Largest effective epsilon the site accepts, summed over the protocol's stages: each stage
    counts what it can really spend (its DP allocation, within privacy.total_epsilon), and a
    stage without DP (plain features, training without DP, unpaced reply timing) counts as inf,
    whatever total the protocol declares. inf accepts any protocol, the paper's plain study
    included."""
    allow_plain_stages: bool = False
    """Accept stages without DP (effective epsilon inf) under a finite max_total_epsilon, which
    then bounds the DP stages only; forbidden_release_modes and require_dp_training still
    apply. Off: a stage without DP is refused unless max_total_epsilon is inf."""
    forbidden_release_modes: tuple[ReleaseMode, ...] = ("plain",)
    """Feature release modes the site refuses (plain: raw radiomics to the server)."""
    required_aggregation: Literal["secagg+", "bfv", "secure", "fedavg", "any"] = "secagg+"
    """The training aggregation the protocol must use (secagg+ or bfv: the server sees only
    sums; secure: either of them)."""
    min_sites_per_aggregate: int = Field(3, ge=1, le=10_000)
    """Smallest number of sites per training or secure-clustering aggregate the site accepts."""
    require_dp_training: bool = True
    """Refuse protocols that train without DP-SGD (the trained model is then not DP)."""
    allowed_recipient_keys: tuple[Fingerprint, ...] = ()
    """Encryption-key fingerprints of the servers the site may seal to: a protocol that pins
    another server.encryption_key is refused, and so is sealing to a key not listed. Empty: no
    server is allowed."""
    allow_unsigned_simulation: bool = False
    """Accept an unsigned protocol whose study.mode is simulation (never a deployment)."""
    require_version_pin: bool = True
    """Refuse a protocol that does not name the securefed version it was approved for."""


class SiteConfig(_Strict):
    """A site configuration file (SITE.toml)."""

    schema_version: Literal[1] = 1
    """Site configuration format version."""
    site: SiteIdentity
    trust: TrustSpec
    policy: SitePolicy = SitePolicy()


@dataclass(frozen=True)
class AcceptedProtocol:
    """A protocol this site accepted, and on what grounds."""

    loaded: LoadedProtocol
    signers: tuple[str, ...]  # trusted governance keys that signed it
    unsigned: bool  # an unsigned simulation the policy allows

    @property
    def sha256(self) -> str:
        return self.loaded.sha256


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and strictly validate a site configuration; ConfigError (exit 2) names the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: site configuration not found; create one with `securefed site init`"
        ) from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML site configuration ({exc})") from exc
    try:
        return SiteConfig.model_validate(_tuples(data), strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid site configuration: {problems}") from exc


def _tuples(value: object) -> object:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    if any(c in text for c in '"\\\n\r\t') or not text.isprintable():
        raise ConfigError(f"site configuration: value {text!r} cannot be written")
    return f'"{text}"'


def write_site_config(config: SiteConfig, path: str | Path) -> Path:
    """Write ``config`` as commented TOML, never over an existing file (mode 0644)."""
    lines = [
        "# securefed site configuration: this site's own trust and policy (never sent).",
        "# Every field: docs/governance.md. Edit the policy to what your governance allows.",
        f"schema_version = {config.schema_version}",
    ]
    for table, model in (("site", config.site), ("trust", config.trust),
                         ("policy", config.policy)):  # fmt: skip
        lines += ["", f"[{table}]"]
        for name, field in type(model).model_fields.items():
            doc = " ".join((field.description or "").split())
            if doc:
                lines.append(f"# {doc}")
            value = getattr(model, name)
            lines.append(f"# {name} = ..." if value is None else f"{name} = {_toml_value(value)}")
    path = Path(path)
    try:
        write_exclusive(path, ("\n".join(lines) + "\n").encode(), mode=0o644)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists; refusing to overwrite a site configuration") from exc
    return path


def strictest_config(
    site_id: str, trusted: tuple[str, ...], threshold: int = 1, ledger_dir: str | None = None
) -> SiteConfig:
    """The configuration `securefed site init` writes: the strictest policy, for the operator to
    relax (see :class:`SitePolicy` for each default)."""
    try:
        return SiteConfig(
            site=SiteIdentity(id=site_id, ledger_dir=ledger_dir),
            trust=TrustSpec(governance_keys=tuple(trusted), threshold=threshold),
        )
    except ValidationError as exc:
        raise ConfigError(f"site init: {exc.errors()[0]['msg']}") from exc


def policy_violations(loaded: LoadedProtocol, policy: SitePolicy) -> list[str]:
    """Every way the protocol asks more than the site's policy allows (empty: none)."""
    p = loaded.protocol
    out = epsilon_violations(p, policy)
    if p.release.mode in policy.forbidden_release_modes:
        out.append(f"release.mode {p.release.mode!r} is forbidden by the policy")
    wanted = policy.required_aggregation
    secure = wanted == "secure" and p.training.aggregation in ("secagg+", "bfv")
    if wanted != "any" and not secure and p.training.aggregation != wanted:
        out.append(
            f"training.aggregation {p.training.aggregation!r}: the policy requires {wanted!r}"
        )
    sizes = [("training.min_sites_per_aggregate", p.training.min_sites_per_aggregate)]
    if p.release.mode == "secure-aggregate":
        sizes.append(("clustering.secure.min_sites_per_aggregate",
                      p.clustering.secure.min_sites_per_aggregate))  # fmt: skip
    for name, value in sizes:
        if value < policy.min_sites_per_aggregate:
            out.append(f"{name} {value} is below the policy's {policy.min_sites_per_aggregate}")
    if policy.require_dp_training and p.training.dp_training is None:
        out.append(
            "training.dp_sgd and training.client_dp are off: the policy requires DP training"
        )
    server_key = p.server.encryption_key
    if server_key is not None and server_key not in policy.allowed_recipient_keys:
        out.append(f"server.encryption_key {server_key} is not among the policy's allowed keys")
    if policy.require_version_pin and p.governance.securefed_version is None:
        out.append("governance.securefed_version is not set: the policy requires a version pin")
    return out


def epsilon_violations(protocol: Protocol, policy: SitePolicy) -> list[str]:
    """How the protocol's effective epsilon breaks ``policy.max_total_epsilon`` (empty: it does
    not), stage by stage (securefed.protocol.egress.stage_epsilons). A stage that releases a
    value without DP has effective epsilon inf: refused unless ``policy.allow_plain_stages``.
    The DP values of every stage spend at most the sum of their allocations (the ledger holds
    each stage to its own), and never more than privacy.total_epsilon (the ledger's cap): that
    spend must fit too. The protocol's declared total never makes a stage without DP
    acceptable."""
    cap = policy.max_total_epsilon
    if math.isinf(cap):
        return []
    out = []
    stages = stage_epsilons(protocol)
    if not policy.allow_plain_stages:
        for s in stages:
            if s.clear:
                out.append(
                    f"stage {s.stage}: effective epsilon inf (released without DP: "
                    f"{', '.join(s.clear)}) exceeds the policy's max_total_epsilon {cap:g}; a "
                    "site that accepts stages without DP sets policy.allow_plain_stages = true"
                )
    dp = [s for s in stages if s.dp > 0]
    allocated = sum(s.dp for s in dp)
    spend = min(allocated, protocol.privacy.total_epsilon)
    if spend > cap * (1 + 1e-12):
        parts = " + ".join(f"{s.stage} {s.dp:g}" for s in dp)
        capped = (
            f", capped by privacy.total_epsilon {protocol.privacy.total_epsilon:g}"
            if spend < allocated
            else ""
        )
        out.append(
            f"DP stage(s) {parts}: effective epsilon {spend:g}{capped} exceeds the policy's "
            f"max_total_epsilon {cap:g}"
        )
    return out


def accept_unsigned_simulation(loaded: LoadedProtocol) -> AcceptedProtocol:
    """A simulation protocol run without site configurations (tests, the differential egress
    audit, a study's sites played in one process): accepted as unsigned, never a deployment
    protocol (those need the site's own SITE.toml and verify_for_site)."""
    if not loaded.protocol.is_simulation:
        raise SiteTrustError(
            f"{loaded.sha256}: a deployment protocol is accepted only by the site's own trust "
            "and policy (verify_for_site with its SITE.toml)"
        )
    return AcceptedProtocol(loaded=loaded, signers=(), unsigned=True)


def site_state_folder(config: SiteConfig, state: Path | None) -> Path:
    """The one folder of the site's ledger: SITE.toml's ``site.ledger_dir`` when it sets one (a
    ``state`` elsewhere is refused: a fresh folder would hold a fresh, unspent budget), else
    ``state``."""
    from securefed.errors import ConfigError

    if config.site.ledger_dir is None:
        if state is None:
            raise ConfigError(
                "--state: pass this site's state folder, or set site.ledger_dir in SITE.toml"
            )
        return Path(state)
    pinned = Path(config.site.ledger_dir)
    if state is not None and Path(state).resolve() != pinned.resolve():
        raise SiteTrustError(
            f"--state {state}: this site's SITE.toml pins its ledger to {pinned} (one ledger per "
            "site; a fresh folder would refund the budget); drop --state or pass that folder"
        )
    return pinned


def verify_for_site(protocol_path: str | Path, config: SiteConfig) -> AcceptedProtocol:
    """Accept the protocol at ``protocol_path`` for this site, or raise SiteTrustError (exit 3)
    naming the failed check: not this site's protocol, unsigned, a signature that does not verify
    or signs another protocol (edited after signing), too few trusted signers, another securefed
    version, or the site's policy. Run before touching any data."""
    from securefed.crypto import read_signatures, signature_path, trusted_signers

    loaded = load_protocol(protocol_path)
    p = loaded.protocol
    if p.partition_of_site(config.site.id) is None:
        raise SiteTrustError(
            f"{protocol_path}: {config.site.id} is not a site of this protocol; refusing"
        )
    sig = signature_path(protocol_path)
    signers: tuple[str, ...] = ()
    unsigned = not sig.exists()
    if unsigned:
        if not (p.is_simulation and config.policy.allow_unsigned_simulation):
            raise SiteTrustError(
                f"{protocol_path}: unsigned (no {sig.name}); the site accepts only protocols "
                "signed by its trusted governance keys (`securefed protocol sign`)"
            )
    else:
        try:
            signers = trusted_signers(
                read_signatures(sig), loaded.sha256, frozenset(config.trust.governance_keys),
                str(sig),
            )  # fmt: skip
        except ProtocolSignatureError as exc:
            raise SiteTrustError(f"{protocol_path}: {exc}") from exc
        if len(signers) < config.trust.threshold:
            raise SiteTrustError(
                f"{protocol_path}: signed by {len(signers)} trusted governance key(s), the site "
                f"requires {config.trust.threshold} (trusted: "
                f"{', '.join(config.trust.governance_keys)})"
            )
    _check_budget_continuity(loaded, config)
    pinned = p.governance.securefed_version
    if pinned is not None and pinned != __version__:
        raise SiteTrustError(
            f"{protocol_path}: approved for securefed {pinned}, this site runs {__version__}; "
            "install the approved version or have the amended protocol signed"
        )
    problems = policy_violations(loaded, config.policy)
    if problems:
        raise SiteTrustError(
            f"{protocol_path}: against {config.site.id}'s policy: " + "; ".join(problems)
        )
    return AcceptedProtocol(loaded, signers, unsigned)


def check_recipient(config: SiteConfig, encryption_fingerprint: str) -> None:
    """Refuse to seal to a server key the site's policy does not list."""
    if encryption_fingerprint not in config.policy.allowed_recipient_keys:
        raise SiteTrustError(
            f"{config.site.id}: the server key {encryption_fingerprint} is not among the "
            "policy's allowed_recipient_keys; refusing to seal to it"
        )


def _ledger_protocol(path: Path) -> str | None:
    """The protocol the ledger at ``path`` is bound to now (its last entry's), if any."""
    try:
        lines = [ln for ln in path.read_bytes().splitlines() if ln.strip()]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SiteTrustError(f"{path}: cannot read the site's ledger ({exc.strerror})") from exc
    for raw in reversed(lines):
        try:
            entry = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue  # a torn last line; the ledger itself reports it
        if isinstance(entry, dict) and isinstance(entry.get("protocol"), str):
            return str(entry["protocol"])
    return None


def _check_budget_continuity(loaded: LoadedProtocol, config: SiteConfig) -> None:
    """Refuse a protocol under which the site's recorded spend would not count: the site's
    ledger (``site.ledger_dir``) is bound to another protocol that this one does not name in
    ``governance.supersedes``."""
    if config.site.ledger_dir is None:
        return
    path = Path(config.site.ledger_dir) / "ledger.jsonl"
    bound = _ledger_protocol(path)
    if bound is None or bound == loaded.sha256:
        return
    if loaded.protocol.governance.supersedes != bound:
        raise SiteTrustError(
            f"{path}: the site has spent budget under protocol {bound}; this protocol "
            f"({loaded.sha256}) would start the budget afresh. An amendment must name it "
            "(governance.supersedes) so that the spend carries over"
        )
