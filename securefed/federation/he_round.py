"""One BFV round in the Flower engine (``training.aggregation = "bfv"``, securefed.crypto.bfv).

1. The server sends the model (a train message); each site trains and replies with one uint8
   array, its encrypted contribution (weight x clipped, quantised model; weight and MAC tags in
   a header ciphertext), and its FedAvg weight and metrics as under the other aggregations.
2. The server adds the ciphertexts (:class:`~securefed.crypto.bfv.AggregatorContext`: no secret
   and no public key) and sends the sum, the declared contributors and the model's array shapes
   to the decryptor site in a train message carrying the ``securefed.he`` config record.
3. The decryptor (:func:`make_decrypt_mod`) checks, on its own protocol copy, that it is the
   protocol's decryptor, that at least ``min_sites_per_aggregate`` sites are declared and that
   this phase and round were never decrypted before (``he-decrypted.json`` beside its ledger);
   verifies the MAC (the sum is exactly the declared sites' contributions of this round) and
   replies with the decoded weighted average only.

What leaves the decryptor: the average model of the round (what SecAgg+ gives the server). What
the server learns besides: ciphertext lengths and the weights the protocol declares anyway.
Tests: ``tests/federation/test_he_round.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from securefed.crypto.bfv import (
    AggregatorContext,
    BfvKey,
    Encoding,
    decrypt_aggregate,
    encrypt_contribution,
    load_aggregator_context,
    load_key,
)
from securefed.errors import (
    ConfigError,
    CryptoError,
    InstructionRefusedError,
    WrongProtocolError,
)
from securefed.federation.config import SiteSettings
from securefed.federation.flower_internals import ClientAppCallable
from securefed.fileio import read_json, write_json_atomic

__all__ = [
    "DECRYPTED_FILE",
    "HE_AGGREGATE",
    "HE_MEAN",
    "HE_RECORD",
    "aggregator_context",
    "decrypt_request",
    "encrypt_update",
    "is_decrypt_request",
    "load_site_key",
    "make_decrypt_mod",
    "site_encoding",
    "site_key_path",
]

log = logging.getLogger("securefed.he")

HE_RECORD = "securefed.he"
HE_AGGREGATE = "securefed.he.aggregate"
HE_MEAN = "securefed.he.mean"
DECRYPTED_FILE = "he-decrypted.json"
TRAINED_FILE = "he-trained.json"  # the (phase, round)s this site contributed to


def site_key_path(site: SiteSettings, ledger_dir: str) -> Path:
    """The site's BFV key file: node config ``he-key``, else ``<ledger-dir>/he/bfv.key``."""
    if site.he_key:
        return Path(site.he_key)
    base = ledger_dir or site.work_dir
    if not base:
        raise ConfigError(
            f"site {site.partition_id}: a bfv protocol needs the site's BFV key; set node config "
            "'he-key' (or 'ledger-dir')"
        )
    return Path(base) / "he" / "bfv.key"


def load_site_key(path: Path) -> BfvKey:
    """The site's BFV secret key (its SiteRuntime reads it once per process)."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: no BFV key; the key dealing gives each site its copy before training "
            "(deployment: `securefed site he-key deal|open`; simulation: securefed.study."
            "he_keys)"
        )
    return load_key(path.read_bytes(), str(path))


def aggregator_context(path: str) -> AggregatorContext:
    """The server's public-only context (no secret key), read from its file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no BFV aggregator context; run the key dealing first")
    return load_aggregator_context(p.read_bytes(), str(p))


def site_encoding(protocol: Any, fields: int) -> Encoding:
    """The round's encoding from the site's own protocol (clip, precision) and the server's
    packing (a wrong packing only makes the decryptor refuse: it checks the weight sum)."""
    return Encoding(
        clip=float(protocol.secure_aggregation.clipping_range),
        precision_bits=int(protocol.homomorphic.precision_bits),
        fields=int(fields),
    )


def encrypt_update(
    site: SiteSettings,
    ledger_dir: str,
    loaded: Any,
    arrays: list[np.ndarray],
    *,
    weight: int,
    config: dict[str, Any],
    key_of: Callable[[Path], BfvKey] = load_site_key,
) -> list[np.ndarray]:
    """The site's fit reply under bfv: one uint8 array (the encrypted contribution).
    ``key_of``: reads the site's BFV key (its SiteRuntime's, cached per process)."""
    key = key_of(site_key_path(site, ledger_dir))
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    cluster = int(config.get("cluster", -1))
    phase = "global" if cluster < 0 else f"cluster-{cluster}"
    _record_trained(Path(ledger_dir), phase, int(config.get("server-round", 0)))
    blob = encrypt_contribution(
        key, flat, weight=int(weight), site=site.partition_id,
        enc=site_encoding(loaded.protocol, int(config.get("he-fields", 2))),
        protocol_hash=loaded.sha256, phase="global" if cluster < 0 else f"cluster-{cluster}",
        rnd=int(config.get("server-round", 0)),
    )  # fmt: skip
    return [np.frombuffer(blob, dtype=np.uint8).copy()]


def decrypt_request(
    total: bytes,
    *,
    phase: str,
    rnd: int,
    sites: list[int],
    fields: int,
    shapes: list[tuple[str, tuple[int, ...]]],
    protocol_hash: str,
) -> RecordDict:
    """The server's request to the decryptor: the sum, who is in it, and the model's shapes."""
    return RecordDict(
        {
            HE_RECORD: ConfigRecord(
                {
                    "phase": phase,
                    "round": int(rnd),
                    "sites": ",".join(str(s) for s in sites),
                    "fields": int(fields),
                    "shapes": json.dumps([[d, list(s)] for d, s in shapes]),
                    "protocol-hash": protocol_hash,
                }
            ),
            HE_AGGREGATE: ArrayRecord({"sum": Array(np.frombuffer(total, dtype=np.uint8).copy())}),
        }
    )


def is_decrypt_request(msg: Message) -> bool:
    return (
        msg.metadata.message_type == MessageType.TRAIN
        and msg.has_content()
        and HE_RECORD in msg.content.config_records
    )


def declared_shapes(content: Any) -> list[tuple[str, tuple[int, ...]]]:
    """The (dtype, shape) list a decrypt request declares."""
    try:
        raw = json.loads(str(content.config_records[HE_RECORD]["shapes"]))
        return [(str(d), tuple(int(x) for x in s)) for d, s in raw]
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError("decrypt request: 'shapes' is not a list of [dtype, shape]") from exc


def _record_trained(ledger_dir: Path, phase: str, rnd: int) -> None:
    """The (phase, round)s this site encrypted a contribution for: as the decryptor it opens
    only a sum of a round it trained in (securefed.federation.he_round.make_decrypt_mod)."""
    path = ledger_dir / TRAINED_FILE
    done: dict[str, Any] = read_json(path) if path.is_file() else {}
    done[f"{phase}/{rnd}"] = True
    write_json_atomic(path, done)


def _check_trained(ledger_dir: Path, site: SiteSettings, phase: str, rnd: int,
                   sites: list[int]) -> None:  # fmt: skip
    """The decryptor opens a sum of a phase it holds train cases of only if it trained in that
    (phase, round) and its own contribution is in the sum: a coordinator cannot have it open a
    sum of other sites alone, nor of a round it never saw."""
    if not _holds_phase(site, phase):
        return
    path = ledger_dir / TRAINED_FILE
    done: dict[str, Any] = read_json(path) if path.is_file() else {}
    if f"{phase}/{rnd}" not in done:
        raise InstructionRefusedError(
            f"{phase} round {rnd}: this site did not train in it; refusing to decrypt its sum"
        )
    if site.partition_id not in sites:
        raise InstructionRefusedError(
            f"{phase} round {rnd}: a sum without this site's own contribution; refusing"
        )


def _holds_phase(site: SiteSettings, phase: str) -> bool:
    if phase == "global":
        return True
    if not site.assignments or not phase.startswith("cluster-"):
        return False
    from securefed.clustering.assignments import read_assignments, site_subjects

    cluster = int(phase.removeprefix("cluster-"))
    rows = read_assignments(Path(site.assignments))
    return bool(site_subjects(rows, site.partition_id, "train", cluster))


def _record_once(ledger_dir: Path, phase: str, rnd: int, sites: list[int]) -> None:
    """Refuse a second decryption of one phase and round (two sums of one round over different
    sites would give away the difference); record this one before anything is released."""
    path = ledger_dir / DECRYPTED_FILE
    done: dict[str, Any] = read_json(path) if path.is_file() else {}
    slot = f"{phase}/{rnd}"
    if slot in done:
        raise InstructionRefusedError(
            f"{phase} round {rnd} was already decrypted (sites {done[slot]}); a round is "
            "decrypted once. A phase interrupted after its decryption cannot redo that round: "
            "start the phase again in a new run folder"
        )
    done[slot] = sites
    write_json_atomic(path, done)


def make_decrypt_mod(
    resolve: Callable[[Context], tuple[SiteSettings, Any, str]],
    key_of: Callable[[Path], BfvKey] = load_site_key,
) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A client mod answering decrypt requests (passes every other message on). ``resolve``
    gives the site's settings, its accepted protocol and its ledger folder; ``key_of`` reads
    the site's BFV key."""

    def he_decrypt_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if not is_decrypt_request(msg):
            return call_next(msg, ctxt)
        site, loaded, ledger_dir = resolve(ctxt)
        cfg = msg.content.config_records[HE_RECORD]
        p = loaded.protocol
        if str(cfg.get("protocol-hash", "")) != loaded.sha256:
            raise WrongProtocolError(
                f"site {site.partition_id}: a decrypt request for another protocol; refusing"
            )
        if p.training.aggregation != "bfv":
            raise InstructionRefusedError(
                "a decrypt request under a protocol whose aggregation is not bfv"
            )
        mine = p.decryptor_partition()
        if mine is None and not p.is_simulation:  # pragma: no cover - schema requires it
            raise InstructionRefusedError("the protocol names no decryptor")
        if mine is not None and mine != site.partition_id:
            raise InstructionRefusedError(
                f"site {site.partition_id} is not the protocol's decryptor (partition {mine}); "
                "refusing to decrypt"
            )
        sites = [int(x) for x in str(cfg["sites"]).split(",") if x]
        need = max(2, p.training.min_sites_per_aggregate)
        if len(set(sites)) < need:
            raise InstructionRefusedError(
                f"a decrypt request for {len(set(sites))} site(s); the protocol needs at least "
                f"{need} per aggregate: refusing"
            )
        phase, rnd = str(cfg["phase"]), int(str(cfg["round"]))
        _check_trained(Path(ledger_dir), site, phase, rnd, sites)  # before anything is opened
        shapes = declared_shapes(msg.content)
        enc = site_encoding(p, int(str(cfg["fields"])))
        key = key_of(site_key_path(site, ledger_dir))
        total = bytes(msg.content.array_records[HE_AGGREGATE]["sum"].numpy().tobytes())
        try:
            out = decrypt_aggregate(key, total, sites=sites, enc=enc,
                                    protocol_hash=loaded.sha256, phase=phase, rnd=rnd)  # fmt: skip
        except CryptoError as exc:
            _audit(ledger_dir, site, loaded, "he-decrypt-refused", phase, rnd, sites)
            raise InstructionRefusedError(f"site {site.partition_id}: {exc}") from exc
        sizes = [int(np.prod(s)) for _, s in shapes]
        if sum(sizes) != out.mean.size:
            raise InstructionRefusedError(
                f"decrypt request: the declared shapes hold {sum(sizes)} values, the aggregate "
                f"{out.mean.size}; refusing"
            )
        _record_once(Path(ledger_dir), phase, rnd, sites)
        _audit(ledger_dir, site, loaded, "he-decrypt", phase, rnd, sites)
        arrays, pos = [], 0
        for (dtype, shape), n in zip(shapes, sizes, strict=True):
            arrays.append(out.mean[pos : pos + n].reshape(shape).astype(np.dtype(dtype)))
            pos += n
        return Message(RecordDict({HE_MEAN: ArrayRecord(arrays)}), reply_to=msg)

    return he_decrypt_mod


def _audit(ledger_dir: str, site: SiteSettings, loaded: Any, event: str, phase: str, rnd: int,
           sites: list[int]) -> None:  # fmt: skip
    if not ledger_dir:
        return
    from securefed.trust.audit_log import AuditLog

    pid = site.partition_id
    sites_ = loaded.protocol.resolve_sites([pid])
    sid = next((s.id for s in sites_ if s.partition_id == pid), f"partition-{pid}")
    AuditLog(Path(ledger_dir), sid, loaded.sha256).record(
        event, phase=phase, round=rnd, sites=",".join(str(s) for s in sites)
    )
