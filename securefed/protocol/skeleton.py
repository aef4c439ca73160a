"""`securefed protocol new --deployment`: a deployment protocol skeleton from a shipped study
protocol, with every field a deployment needs (sites with their partitions and key
fingerprints, the server's, the governance key, the approved app bundle, the reply pacing of a
protocol that claims a finite epsilon), filled from the public key files given and left as
commented ``TODO`` lines otherwise, so that `protocol check` names everything still missing at
once.

Nothing here leaves anyone's machine (it writes a file). Tests: ``tests/cli/test_protocol_new.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tomli_w

__all__ = ["PartyKeys", "deployment_skeleton"]


@dataclass(frozen=True)
class PartyKeys:
    """The fingerprints known for one party (None: not given yet)."""

    signing_key: str | None = None
    encryption_key: str | None = None
    node_key: str | None = None


def _key_lines(keys: PartyKeys, node: bool, who: str) -> list[str]:
    out = []
    for name, hint in (("signing_key", f"`securefed keys show {who}.pub.json`"),
                       ("encryption_key", f"`securefed keys show {who}.pub.json`"),
                       ("node_key", f"`securefed keys show node.pub` at {who}")):  # fmt: skip
        if name == "node_key" and not node:
            continue
        value = getattr(keys, name)
        out.append(f'{name} = "{value}"' if value else f'# TODO {name} = "sha256:..."  # {hint}')
    return out


def deployment_skeleton(
    base: Mapping[str, Any],
    sites: Sequence[str],
    keys: Mapping[str, PartyKeys],
    *,
    server_id: str,
    governance: str | None,
    app_hash: str,
    version: str,
    reply_slot_s: float,
) -> str:
    """The TOML text of a deployment protocol: ``base`` (a parsed shipped protocol) with
    study.mode 'deployment', ``sites`` at partitions 1..N, and the keys known in ``keys`` (by
    party id; the server's under ``server_id``)."""
    data = {k: v for k, v in base.items() if k not in ("sites", "server", "governance")}
    data["study"] = {**data["study"], "mode": "deployment"}
    training = dict(data.get("training", {}))
    training["reply_slot_s"] = float(reply_slot_s)
    data["training"] = training
    secure = dict(data.get("secure_aggregation", {}))
    if float(reply_slot_s) > 0 and float(secure.get("timeout_s", 120.0)) <= 2 * reply_slot_s:
        # every paced reply arrives one slot after its request: the secure aggregation waits
        # for at least two (the base's timeout was chosen for unpaced replies)
        secure["timeout_s"] = 2 * float(reply_slot_s) + 60.0
        data["secure_aggregation"] = secure
    privacy = dict(data.get("privacy", {}))
    privacy.pop("unsafe_seeded_noise", None)
    privacy.pop("unsafe_noise_seed", None)
    data["privacy"] = privacy
    head = [
        "# A deployment protocol skeleton (`securefed protocol new --deployment`).",
        "# Fill every TODO (each party's fingerprints: `securefed keys show FILE`), then",
        "#   securefed protocol check THIS.toml   (names everything still missing at once)",
        "#   securefed protocol sign THIS.toml --key GOVERNANCE.key",
        "# Each site then accepts it with `securefed site verify` under its own SITE.toml.",
        "# training.reply_slot_s: every local-training reply leaves this many seconds after its",
        "# request (timing side channel closed); choose it with head room over a round's work.",
        "# Under a finite epsilon no per-site test value leaves a site; for one DP test summary",
        "# over the training sites add  [evaluation.dp_summary] epsilon = 0.5  (counted in",
        "# privacy.total_epsilon; docs/deployment.md section 5).",
        "",
    ]
    body = tomli_w.dumps(data).rstrip("\n").splitlines()
    gov = ["", "[governance]", f'securefed_version = "{version}"',
           f'approved_apps = ["{app_hash}"]  # `securefed protocol app-hash` on the installed '
           "version"]  # fmt: skip
    todo = '# TODO signing_key = "sha256:..."  # `securefed keys show GOVERNANCE.pub.json`'
    gov.append(f'signing_key = "{governance}"' if governance else todo)
    server = ["", "[server]", f'id = "{server_id}"',
              *_key_lines(keys.get(server_id, PartyKeys()), False, server_id)]  # fmt: skip
    parties: list[str] = []
    for i, site in enumerate(sites, start=1):
        parties += ["", "[[sites]]", f'id = "{site}"', f"partition_id = {i}",
                    *_key_lines(keys.get(site, PartyKeys()), True, site)]  # fmt: skip
    return "\n".join(head + body + gov + server + parties) + "\n"
