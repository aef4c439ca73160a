"""``securefed site selftest``: a site operator runs the hostile-coordinator attacks against their
own installation before joining a study.

It builds a throwaway study in a work folder: an ephemeral governance key that signs two small
simulation protocols (one under ``secagg+``, one under ``fedavg`` so that a plain train message
reaches the instruction checks) that pin each site's fresh signing key, synthetic NIfTI cases of
three sites (securefed's own generator,
nothing downloaded), and each site's SITE.toml trusting the ephemeral key with the operator's
policy, or, when that policy refuses the throwaway protocol (a pinned server key, a required
epsilon), the board's policy for it: the attacks exercise the site runtime's checks, which do not
depend on the policy, and the report says which policy ran. Then a coordinator that deviates
(securefed.federation.selftest) drives the installed securefed's real ClientApp chain (every mod,
the default task reading the NIfTI files) with each attack and checks the refusal code, the
site's audit-log entry and that no case was loaded where the refusal must come first.

What leaves the operator's machine: nothing (local files only).
Tests: ``tests/study/test_selftest.py``.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tomli_w

from securefed.crypto import (
    add_signature,
    generate_keys,
    private_key_path,
    sign_protocol_hash,
    signature_path,
    write_keys,
)
from securefed.errors import SiteTrustError
from securefed.federation.config import SiteSettings
from securefed.federation.selftest import AttackOutcome, HostileCoordinator, run_attacks
from securefed.protocol import LoadedProtocol, load_protocol
from securefed.study.governance import board_policy
from securefed.trust import (
    SiteConfig,
    SiteIdentity,
    TrustSpec,
    load_site_config,
    verify_for_site,
    write_site_config,
)

__all__ = ["SelftestReport", "run_selftest"]

_PARTITIONS = (1, 2, 3)
_CASES_PER_SITE = 3


@dataclass
class SelftestReport:
    """The policy the attacks ran under and one outcome per attack (plus the honest control)."""

    policy_note: str
    outcomes: list[AttackOutcome] = field(default_factory=list)

    @property
    def all_refused(self) -> bool:
        return bool(self.outcomes) and all(o.refused for o in self.outcomes)


def _protocol(folder: Path, aggregation: str, site_id: str) -> Path:
    """The shipped demo protocol made small: 2 global rounds, 1 step, the three selftest sites
    (the operator's site id at partition 1)."""
    data = tomllib.loads(resources.files("securefed").joinpath("protocols/demo.toml").read_text())
    data["study"]["name"] = f"site-selftest-{aggregation.replace('+', 'p')}"
    data["study"]["description"] = "securefed site selftest: a throwaway study"
    data["training"].update(aggregation=aggregation, global_rounds=2, finetune_rounds=1,
                            local_steps=1, min_sites_per_aggregate=2)  # fmt: skip
    data["secure_aggregation"]["timeout_s"] = 60
    ids = (site_id, "selftest-site-2", "selftest-site-3")
    data["sites"] = []
    for sid, pid in zip(ids, _PARTITIONS, strict=True):
        # each site's signing key, pinned as a deployment protocol pins it (SecAgg+ key signing)
        key = generate_keys("site", sid)
        write_keys(key, folder / "keys")
        data["sites"].append({"id": sid, "partition_id": pid,
                              "signing_key": key.public.signing_fingerprint})  # fmt: skip
    path = folder / "protocol.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _site_configs(
    folder: Path, loaded: LoadedProtocol, protocol: Path, operator: SiteConfig
) -> tuple[dict[int, Path], str]:
    """Each site's SITE.toml (trusting a fresh governance key that signs ``protocol``) with the
    operator's policy, or the board's where that policy refuses the protocol."""
    board = generate_keys("governance", "selftest-governance")
    server = generate_keys("server", "selftest-server")
    add_signature(sign_protocol_hash(loaded.sha256, board), signature_path(protocol))
    trust = TrustSpec(governance_keys=(board.public.signing_fingerprint,))
    note = "the site's own policy accepts the selftest protocol"
    out = {}
    for site in loaded.protocol.sites:
        path = folder / f"{site.id}.site.toml"
        key = str(private_key_path(folder / "keys", site.id).resolve())
        config = SiteConfig(site=SiteIdentity(id=site.id, key=key), trust=trust,
                            policy=operator.policy)  # fmt: skip
        write_site_config(config, path)
        try:
            verify_for_site(protocol, load_site_config(path))
        except SiteTrustError as exc:
            policy = board_policy(loaded, server.public.encryption_fingerprint)
            path.unlink()
            write_site_config(SiteConfig(site=config.site, trust=trust, policy=policy), path)
            reason = str(exc).splitlines()[0][:160]
            note = (f"the site's policy refuses the selftest protocol ({reason}); the attacks ran "
                    "under the board's policy for it (they test the runtime's checks, not the "
                    "policy)")  # fmt: skip
        out[site.partition_id] = path
    return out, note


def _assignments(folder: Path, data: Path) -> Path:
    """clusters.csv: the site under test holds cluster 0 only, the others cluster 1; each site's
    last case is its validation case."""
    from securefed.data import read_partitioning

    by_site: dict[int, list[str]] = {}
    for subject, pid in sorted(read_partitioning(data / "partitioning_1.csv").items()):
        by_site.setdefault(int(pid), []).append(subject)
    rows = ["subject_id,partition_id,split,cluster"]
    for pid, subjects in sorted(by_site.items()):
        for i, subject in enumerate(subjects):
            split = "val" if i == len(subjects) - 1 else "train"
            rows.append(f"{subject},{pid},{split},{0 if pid == 1 else 1}")
    path = folder / "clusters.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _synthesize(data: Path) -> None:
    from securefed.data.synth.presets import Institution, Preset
    from securefed.data.synth.writer import synthesize

    if (data / "partitioning_1.csv").is_file():
        return
    scanners = ("siemens-3t", "ge-1.5t", "philips-3t")
    sites = tuple(Institution(p, _CASES_PER_SITE, ((s, 1.0),))
                  for p, s in zip(_PARTITIONS, scanners, strict=True))  # fmt: skip
    synthesize(data, Preset("site-selftest", "securefed site selftest", sites, 4.0), seed=7,
               force=True)  # fmt: skip


def _sites(folder: Path, data: Path, aggregation: str, operator: SiteConfig) -> tuple[
    HostileCoordinator, str
]:  # fmt: skip
    from securefed.federation.task import default_task

    folder.mkdir(parents=True, exist_ok=True)
    protocol = _protocol(folder, aggregation, operator.site.id)
    loaded = load_protocol(protocol)
    configs, note = _site_configs(folder, loaded, protocol, operator)
    assignments = _assignments(folder, data)
    sites = {
        p: SiteSettings(partition_id=p, data_dir=str(data), protocol=str(protocol),
                        assignments=str(assignments), work_dir=str(folder / f"site{p}"),
                        site_config=str(configs[p]))
        for p in _PARTITIONS
    }  # fmt: skip
    return HostileCoordinator(loaded, sites, default_task()), note


def run_selftest(
    site_config: Path, work: Path, progress: Callable[[AttackOutcome], None] | None = None
) -> SelftestReport:
    """Run every attack (securefed.federation.selftest.ATTACKS) against this installation under
    the site's policy (``site_config``: its SITE.toml, read and validated first); ``work``: a
    folder of the selftest's own (its studies are recreated; the synthetic cases are kept)."""
    operator = load_site_config(site_config)
    work = Path(work)
    for name in ("secagg", "fedavg"):
        shutil.rmtree(work / name, ignore_errors=True)
    _synthesize(work / "data")
    secure, note = _sites(work / "secagg", work / "data", "secagg+", operator)
    plain, _ = _sites(work / "fedavg", work / "data", "fedavg", operator)
    return SelftestReport(note, run_attacks(secure, plain, progress))
