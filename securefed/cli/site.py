"""`securefed site init|verify|node-key|supernode|he-key`: the site's own trust, policy, SuperNode
and BFV key (deployment key dealing: `site he-key deal|open`).

Contract (scripts outside the repository call these): ``site verify`` exits 0 printing the accepted
``sha256:<hex>``, or 3 naming the failed check; a malformed site configuration exits 2.
``site selftest --site-config SITE.toml [--work DIR]`` prints one line per hostile-coordinator
attack (``refused  <name>: ...`` or ``ACCEPTED <name>: ...``) and exits 0 only if every attack is
refused (and the honest control answered), else 3; a missing or malformed SITE.toml exits 2.
``site supernode`` exits 3 before starting anything when the site refuses the protocol (policy,
unsigned, study.mode 'simulation', no approved app bundle, another node key pinned), 2 for
missing TLS material or node key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from securefed.cli._common import (
    ProtocolFileArg,
    console,
    handle_errors,
    info,
    interrupted,
    subgroup,
)
from securefed.cli.trust import accepted_site_keys

__all__ = ["register"]

SiteConfigOption = Annotated[
    Path, typer.Option("--site-config", help="This site's configuration (SITE.toml).")
]


def register(app: typer.Typer) -> None:
    group = subgroup(app, "site", "A site's own trust and policy: init, verify a protocol.")
    group.command("init")(init)
    group.command("verify")(verify)
    group.command("node-key")(node_key)
    group.command("supernode")(supernode)
    group.command("selftest")(selftest)
    group.command("status")(status)
    he = subgroup(group, "he-key", "Deployment under bfv: deal or open the study's BFV key.")
    he.command("deal")(he_key_deal)
    he.command("open")(he_key_open)


KeyOption = Annotated[
    Path, typer.Option("--key", help="This site's private key file (`securefed keys new`).")
]
StateOption = Annotated[
    Path,
    typer.Option(
        "--state",
        help="This site's ledger folder (SITE.toml ledger_dir, else its SuperNode's "
        "--work-dir): gets he/bfv.key.",
    ),
]
PassphraseOption = Annotated[
    Path | None, typer.Option("--passphrase-file", help="File holding the key passphrase.")
]


@handle_errors
def he_key_deal(
    protocol: ProtocolFileArg,
    site_config: SiteConfigOption,
    key: KeyOption,
    public_keys: Annotated[
        Path,
        typer.Option(
            "--public-keys", help="Folder of the other training sites' <site-id>.pub.json."
        ),
    ],
    state: StateOption,
    out: Annotated[
        Path, typer.Option("--out", help="Outbox: one sealed copy per site, aggregator.ctx.")
    ],
    passphrase_file: PassphraseOption = None,
) -> None:
    """The decrypting site makes the study's BFV key: one copy sealed to each other training site
    (to the keys the protocol pins), the aggregator context (no key) for the coordinator, its
    own copy in STATE/he/bfv.key. Leaves the site: the OUT folder."""
    from securefed.site.he_key import deal_key

    _, accepted, keys = accepted_site_keys(protocol, site_config, key, passphrase_file)
    loaded = accepted.loaded
    dealt = deal_key(loaded, keys, public_keys, state, out)
    info(
        f"{keys.party_id}: BFV key made; sealed to {len(dealt.envelopes)} site(s); "
        f"send {dealt.aggregator.name} to the coordinator (`federation coordinate --he-context`)"
    )
    console.print(str(dealt.key), highlight=False, soft_wrap=True)


@handle_errors
def he_key_open(
    protocol: ProtocolFileArg,
    envelope: Annotated[
        Path, typer.Option("--envelope", help="This site's sealed copy from the decryptor.")
    ],
    site_config: SiteConfigOption,
    key: KeyOption,
    state: StateOption,
    passphrase_file: PassphraseOption = None,
) -> None:
    """Open this site's copy of the study's BFV key (only from the dealer the protocol pins) into
    STATE/he/bfv.key (0600). Sends nothing."""
    from securefed.site.he_key import open_dealt

    _, accepted, keys = accepted_site_keys(protocol, site_config, key, passphrase_file)
    loaded = accepted.loaded
    path = open_dealt(loaded, envelope, keys, state)
    info(f"{keys.party_id}: BFV key stored (mode 0600)")
    console.print(str(path), highlight=False, soft_wrap=True)


@handle_errors
def init(
    site_id: Annotated[str, typer.Option("--site-id", help="This site's id in the protocol.")],
    trust: Annotated[
        list[Path],
        typer.Option("--trust", help="A governance public key the site trusts (repeatable)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="The site configuration to write.")],
    threshold: Annotated[
        int, typer.Option("--threshold", help="Trusted signatures a protocol needs.")
    ] = 1,
    ledger_dir: Annotated[
        Path | None,
        typer.Option(
            "--ledger-dir",
            help="The site's state folder of this study: verify then refuses a protocol that "
            "would start the site's budget afresh.",
        ),
    ] = None,
    allow_recipient: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-recipient",
            help="A server the site may seal to (repeatable): its encryption-key fingerprint "
            "(sha256:<64 hex>, as `securefed keys show` prints it) or its public key file "
            "(<id>.pub.json), whose encryption fingerprint is taken.",
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="This site's private key file (`securefed keys new site ID`): its SuperNode "
            "signs its SecAgg+ keys with it (a deployment protocol pins it).",
        ),
    ] = None,
) -> None:
    """Write a site configuration with the strictest policy (edit it to what your governance
    allows): trusted governance keys, signature threshold, policy."""
    from securefed.crypto import load_public_keys
    from securefed.errors import KeyError_
    from securefed.trust import SitePolicy, strictest_config, write_site_config

    keys = []
    for path in trust:
        public = load_public_keys(path)
        if public.role != "governance":
            raise KeyError_(f"{path}: a {public.role} key, not a governance key")
        keys.append(public.signing_fingerprint)
    config = strictest_config(
        site_id, tuple(keys), threshold, str(ledger_dir) if ledger_dir is not None else None
    )
    if key is not None:
        if not key.is_file():
            raise KeyError_(f"--key {key}: no such file (`securefed keys new site {site_id}`)")
        identity = config.site.model_copy(update={"key": str(key.resolve())})
        config = config.model_copy(update={"site": identity})
    if allow_recipient:
        recipients = tuple(_recipient_fingerprint(value) for value in allow_recipient)
        policy = SitePolicy.model_validate(
            {**config.policy.model_dump(), "allowed_recipient_keys": recipients},
            strict=False,
        )
        config = config.model_copy(update={"policy": policy})
    path = write_site_config(config, out)
    info(f"site {site_id}: trusts {len(set(keys))} governance key(s), threshold {threshold}")
    console.print(str(path), highlight=False, soft_wrap=True)


_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_RECIPIENT_FORM = (
    "a server encryption-key fingerprint (sha256: and 64 lowercase hex digits, as `securefed "
    "keys show` prints it) or the server's public key file (<id>.pub.json)"
)


def _recipient_fingerprint(value: str) -> str:
    """An --allow-recipient value as a fingerprint: given as one, or read from a server's key
    file (said on the console, so that the user sees which key the policy now names). Anything
    else is a ConfigError (exit 2) naming the option and the expected form."""
    from securefed.crypto import load_public_keys
    from securefed.errors import ConfigError, SecurefedError

    if _FINGERPRINT.fullmatch(value):
        return value
    path = Path(value)
    if not path.is_file():
        hint = ""
        if value.lower().startswith("sha256:"):
            digits = value[len("sha256:") :]
            hint = f" (a mistyped fingerprint? it has {len(digits)} characters after sha256:"
            hint += ", not all lowercase hex)" if len(digits) == 64 else ", not 64)"
        raise ConfigError(
            f"--allow-recipient {value!r}: neither a fingerprint nor a readable file{hint}; "
            f"expected {_RECIPIENT_FORM}"
        )
    try:
        public = load_public_keys(path, role="server")
    except SecurefedError as exc:
        raise ConfigError(
            f"--allow-recipient {value}: not a server's public key file ({exc}); expected "
            f"{_RECIPIENT_FORM}"
        ) from exc
    info(
        escape(
            f"--allow-recipient {value}: taking the encryption key of server "
            f"{public.party_id!r}, {public.encryption_fingerprint}"
        )
    )
    return public.encryption_fingerprint


@handle_errors
def verify(protocol: ProtocolFileArg, site_config: SiteConfigOption) -> None:
    """Accept PROTOCOL for this site (signatures at PROTOCOL.sig by trusted keys, version, the
    site's policy): exit 0 printing its sha256, or 3 naming the failed check."""
    from securefed.trust import load_site_config, verify_for_site

    config = load_site_config(site_config)
    accepted = verify_for_site(protocol, config)
    how = (
        "unsigned simulation (allowed by policy)"
        if accepted.unsigned
        else (f"signed by {len(accepted.signers)} trusted key(s)")
    )
    info(f"{config.site.id}: accepted, {how}")
    console.print(accepted.sha256, highlight=False, soft_wrap=True)


@handle_errors
def selftest(
    site_config: SiteConfigOption,
    work: Annotated[
        Path | None,
        typer.Option(
            "--work",
            help="Folder for the throwaway study (synthetic cases, keys, logs); default: a "
            "temporary folder, removed afterwards.",
        ),
    ] = None,
) -> None:
    """Run every hostile-coordinator attack against this installation under the site's policy:
    a throwaway study (ephemeral governance key, synthetic NIfTI cases) driven through the real
    ClientApp by a coordinator that deviates. One line per attack; exit 0 only if every attack
    is refused, 3 otherwise. Nothing leaves this machine."""
    import tempfile

    from securefed.errors import EXIT_SECURITY
    from securefed.study.selftest import run_selftest
    from securefed.trust import load_site_config

    load_site_config(site_config)  # a missing or malformed SITE.toml: exit 2 before any work

    def show(o: object) -> None:
        from securefed.federation.selftest import AttackOutcome

        assert isinstance(o, AttackOutcome)
        mark = "refused " if o.refused else "ACCEPTED"
        console.print(escape(f"{mark} {o.name}: {o.what} -> {o.detail}"), highlight=False,
                      soft_wrap=True)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="securefed-selftest-") as tmp:
        report = run_selftest(site_config, work or Path(tmp), show)
    info(report.policy_note)
    failed = [o.name for o in report.outcomes if not o.refused]
    if failed:
        console.print(f"selftest FAILED: {', '.join(failed)}", highlight=False)
        raise typer.Exit(EXIT_SECURITY)
    console.print(f"selftest passed: {len(report.outcomes) - 1} attacks refused", highlight=False)


@handle_errors
def node_key(
    out: Annotated[Path, typer.Option("--out", help="Folder for node.key and node.pub.")],
) -> None:
    """Create this site's SuperNode authentication key (ECDSA P-384, OpenSSH): node.key stays at
    the site (mode 0600), node.pub goes to the coordinator; prints the fingerprint for the
    protocol's [[sites]].node_key."""
    from securefed.crypto.node_key import new_node_key

    _, pub, fp = new_node_key(out)
    info(f"wrote {out}/node.key (private, 0600) and {pub} (send it to the coordinator)")
    console.print(fp, highlight=False)


@handle_errors
def supernode(
    protocol: ProtocolFileArg,
    site_config: SiteConfigOption,
    superlink: Annotated[str, typer.Option("--superlink", help="HOST:PORT of the SuperLink.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="This site's cases.")],
    work_dir: Annotated[Path, typer.Option("--work-dir", help="This site's working folder.")],
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="The study CA certificate (TLS, required).")
    ] = None,
    node_key_file: Annotated[
        Path | None,
        typer.Option("--node-key", help="This site's node.key (`securefed site node-key`)."),
    ] = None,
    assignments: Annotated[
        Path | None, typer.Option("--assignments", help="This site's clusters.csv.")
    ] = None,
    partitions: Annotated[
        Path | None, typer.Option("--partitions", help="This site's partition file.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    runtime_port: Annotated[
        int, typer.Option("--runtime-port", min=1, max=65535, help="Local Runtime API port.")
    ] = 9094,
    check_only: Annotated[
        bool, typer.Option("--check-only", help="Run every check, start nothing.")
    ] = False,
) -> None:
    """Run this site's SuperNode: accept PROTOCOL (signed, study.mode 'deployment') with the
    site's trust and policy, then connect to the SuperLink over TLS with the site's node key
    and run only the app bundles the protocol approves (docs/deployment.md). Stops on SIGTERM
    or Ctrl-C."""
    from securefed.federation.supernode import prepare_site_node

    node = prepare_site_node(
        protocol, site_config, superlink=superlink, ca_cert=ca_cert, node_key=node_key_file,
        data_dir=data_dir, work_dir=work_dir, assignments=assignments, partitions=partitions,
        device=device, runtime_port=runtime_port,
    )  # fmt: skip
    info(
        f"{node.site_id}: accepted {node.protocol_hash}; TLS to {superlink}; "
        f"{len(node.approved)} approved app bundle(s)"
    )
    if check_only:
        return
    import signal

    from securefed.errors import EXIT_INTERRUPTED

    stopped_by = node.serve(say=lambda line: info(f"supernode: {line}"))
    if stopped_by == signal.SIGINT:
        # Ctrl-C: said, and exit 130 (a service manager's SIGTERM is a clean stop: exit 0)
        interrupted()
        raise typer.Exit(EXIT_INTERRUPTED)


@handle_errors
def status(
    protocol: ProtocolFileArg,
    site_config: SiteConfigOption,
    work_dir: Annotated[
        Path | None,
        typer.Option("--work-dir", help="This site's SuperNode working folder (its log)."),
    ] = None,
) -> None:
    """This site at a glance, from its own files: whether its trust and policy accept PROTOCOL,
    the ledger's spend and head, the last round trained per phase, the audit log's last entry,
    the SuperNode's last connection state. Exit 0 when the protocol is accepted, 3 when not."""
    from securefed.errors import EXIT_SECURITY
    from securefed.federation.site_status import site_status

    report = site_status(protocol, site_config, work_dir)
    for line in report.lines():
        console.print(line, highlight=False, soft_wrap=True)
    if not report.accepted:
        raise typer.Exit(EXIT_SECURITY)
