"""The coordinator's half of authenticated SecAgg+ key agreement: a Grid wrapper around Flower's
``SecAggPlusWorkflow`` that relays each site's signature over its SecAgg+ public keys
(securefed.crypto.secagg_keys) with the keys it forwards.

Flower's workflow collects (pk1, pk2) from the setup replies and forwards every node's
neighbours' keys in the share-keys request; it knows nothing of signatures. This wrapper keeps the
signature record of each setup reply (by source node) and adds, to each share-keys request, the
signatures of the neighbours that request lists. The sites check them
(securefed.federation.site_rules); an honest coordinator only relays, a deviating one cannot
forge them. What it relays is what the sites sent: site ids, public signing keys, signatures.
Tests: ``tests/adversary/test_signed_secagg_keys.py``.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from securefed.federation.flower_internals import RECORD_KEY_CONFIGS
from securefed.federation.flower_internals import SecAggPlusKey as Key
from securefed.federation.flower_internals import SecAggPlusStage as Stage
from securefed.federation.grid_wrapper import GridWrapper

__all__ = ["KEYSIGS_RECORD", "KEYSIG_RECORD", "SignedKeyRelay"]

KEYSIG_RECORD = "securefed.secagg-keysig"
"""A site's setup reply: ``{"signed": [site id, Ed25519 public key, signature]}``."""
KEYSIGS_RECORD = "securefed.secagg-keysigs"
"""A share-keys request: ``{str(node id): [site id, public key, signature]}`` per neighbour."""


class SignedKeyRelay(GridWrapper):
    """``grid`` with the SecAgg+ key signatures relayed (see the module docstring)."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self._signed: dict[int, list[bytes]] = {}

    def outgoing(self, msg: Message) -> Message:
        if not msg.has_content():
            return msg
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is None:
            return msg
        if configs.get(Key.STAGE) == Stage.SETUP:
            self._signed.clear()  # a new SecAgg+ round: fresh keys
        elif configs.get(Key.STAGE) == Stage.SHARE_KEYS:
            relayed = {k: self._signed[int(k)] for k in configs
                       if k != Key.STAGE and int(k) in self._signed}  # fmt: skip
            msg.content.config_records[KEYSIGS_RECORD] = ConfigRecord(relayed)  # type: ignore[arg-type]
        return msg

    def incoming(self, reply: Message) -> bool:
        if reply.has_error() or not reply.has_content():
            return True
        record = reply.content.config_records.get(KEYSIG_RECORD)
        if record is not None and isinstance(record.get("signed"), list):
            self._signed[int(reply.metadata.src_node_id)] = list(record["signed"])  # type: ignore[arg-type]
        return True
