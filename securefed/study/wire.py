"""Bytes on the wire per site and round, measured from the sites' egress logs.

Every Flower reply a site sends is logged with each field's payload size (securefed.trust
.egress_log: the raw bytes of arrays and byte strings, 8 per number); this module adds up the
training replies of each round (``train`` messages, SecAgg+'s stages included) and reports the
mean upload per site and round against the fp32 size of the model. Protobuf and gRPC framing are
not counted. The decryptor's extra reply under bfv (the decoded average, once per round) is
reported apart.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from securefed.trust.egress_log import EGRESS_FILE, read_egress_log

__all__ = ["estimate_upload", "wire_summary"]


def _round_uploads(entries: list[dict[str, Any]]) -> tuple[dict[tuple[str, str], int], list[int]]:
    """{(phase, round): bytes} of one site's train replies, and its decrypt replies' sizes."""
    per: dict[tuple[str, str], int] = defaultdict(int)
    decrypts: list[int] = []
    for entry in entries:
        stage = str(entry.get("stage", ""))
        parts = stage.split("/")
        if entry.get("kind") != "flower-reply" or len(parts) != 3 or parts[2] != "train":
            continue
        fields = entry.get("fields", [])
        group = next((str(f.get("value")) for f in fields if f.get("name") == "group"), "")
        size = sum(int(f.get("bytes", 0)) for f in fields if f.get("name") != "group")
        if group.startswith("decrypt-"):
            decrypts.append(size)
        elif group.isdigit():
            per[(parts[1], group)] += size
    return per, decrypts


def wire_summary(sites_dir: Path, aggregation: str, n_values: int) -> dict[str, Any]:
    """``{"aggregation", "bytes_per_client_per_round", "fp32_bytes", "ratio_to_fp32",
    "rounds_measured", "per_phase", "decryptor_bytes_per_round"}`` over every site's log."""
    totals: dict[str, list[int]] = defaultdict(list)
    decrypts: list[int] = []
    for log in sorted(Path(sites_dir).glob(f"*/{EGRESS_FILE}")):
        per, dec = _round_uploads(read_egress_log(log))
        decrypts += dec
        for (phase, _), size in per.items():
            totals[phase].append(size)
    everything = [s for sizes in totals.values() for s in sizes]
    fp32 = 4 * int(n_values)
    mean = sum(everything) / len(everything) if everything else None
    return {
        "aggregation": aggregation,
        "bytes_per_client_per_round": round(mean) if mean is not None else None,
        "fp32_bytes": fp32,
        "ratio_to_fp32": round(mean / fp32, 3) if mean is not None and fp32 else None,
        "rounds_measured": len(everything),
        "per_phase": {p: round(sum(s) / len(s)) for p, s in sorted(totals.items()) if s},
        "decryptor_bytes_per_round": round(sum(decrypts) / len(decrypts)) if decrypts else None,
    }


def estimate_upload(protocol: Any, *, measure: bool = True) -> dict[str, Any]:
    """Before a site approves ``protocol``: the model's size, the upload per site and round under
    its aggregation, and (bfv) the encryption time per round, measured on a sample of this
    machine and scaled to the model (``protocol check`` prints it)."""
    import time

    import numpy as np

    from securefed.federation.task import default_task, sent_indices
    from securefed.models import build_model

    t = protocol.training
    weights = default_task().get_weights(build_model(t))
    n = sum(int(w.size) for w in weights)
    sent = sent_indices(default_task(), t)  # training.trainable: the trained arrays only
    n_sent = n if sent is None else sum(int(weights[i].size) for i in sent)
    out: dict[str, Any] = {"aggregation": t.aggregation, "values": n, "fp32_bytes": 4 * n,
                           "sent_values": n_sent}  # fmt: skip
    if t.aggregation == "fedavg":
        out["bytes_per_client_per_round"] = 4 * n_sent
        return out
    if t.aggregation == "secagg+" and t.client_dp.enabled:
        from securefed.privacy.ddg import padded_dim

        # one rotated vector, padded to its Walsh-Hadamard blocks, masked as int64
        out["client_dp"] = True
        out["bytes_per_client_per_round"] = 8 * padded_dim(n)
        return out
    if t.aggregation == "secagg+":
        # Flower's SecAgg+ uploads the masked vector as int64 (its 2^32 modulus fits 32 bits)
        out["bytes_per_client_per_round"] = 8 * n_sent
        return out
    from securefed.crypto.bfv import (
        BFV_N,
        contribution_bytes,
        encoding_for,
        encrypt_contribution,
        make_key,
    )

    sa, bits = protocol.secure_aggregation, protocol.homomorphic.precision_bits
    two = encoding_for(sa.clipping_range, 1, bits)
    one = encoding_for(sa.clipping_range, two.max_weight_sum + 1, bits)
    out["weight_sum_limit_two_per_slot"] = two.max_weight_sum
    out["bytes_two_per_slot"] = contribution_bytes(n, two)
    out["bytes_one_per_slot"] = contribution_bytes(n, one)
    # uniform weights (a protocol that claims a finite epsilon): the weight sum is the number
    # of sites; case counts: the phase's sites x its largest count, known only at run time
    uniform = protocol.claims_finite_epsilon
    n_sites = len(protocol.sites) or None
    fits = uniform and (n_sites is None or n_sites <= two.max_weight_sum)
    enc = two if fits else one
    out["values_per_slot"] = enc.fields
    out["bytes_per_client_per_round"] = contribution_bytes(n, enc)
    if measure:
        key, sample = make_key(), 4 * BFV_N * enc.fields
        start = time.perf_counter()
        zero = "sha256:" + "0" * 64
        encrypt_contribution(key, np.zeros(sample), weight=1, site=0, enc=enc,
                             protocol_hash=zero, phase="estimate", rnd=1)  # fmt: skip
        per_ct = (time.perf_counter() - start) / 5  # four data ciphertexts and the header
        out["encrypt_seconds_per_round"] = round(per_ct * enc.ciphertexts_for(n), 2)
    return out
