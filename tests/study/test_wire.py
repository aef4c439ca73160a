"""Bytes on the wire: the study's figures add up the payload sizes the sites' egress logs
record, and `protocol check` tells a site the upload it commits to before it approves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from securefed.cli import app
from securefed.study.wire import wire_summary
from securefed.trust.egress_log import EgressLog, describe_value

ROOT = Path(__file__).resolve().parents[2]


def _reply(log: EgressLog, phase: str, group: str, arrays: list[np.ndarray]) -> None:
    fields = [{"name": "group", "type": "str", "value": group}]
    fields += [describe_value(f"fitres.parameters.{i}", a) for i, a in enumerate(arrays)]
    fields.append(describe_value("fitres.num_examples.num_examples", 1))
    log.record("flower-reply", f"training/{phase}/train", "server", fields)


def test_wire_summary_adds_up_train_replies_per_site_and_round(tmp_path: Path) -> None:
    model = [np.zeros(1000, np.float32), np.zeros(24, np.float32)]  # 4096 bytes in fp32
    for site in ("site-1", "site-2"):
        log = EgressLog(tmp_path / site, site, "sha256:" + "0" * 64)
        for rnd in ("1", "2"):
            _reply(log, "global", rnd, model)
        _reply(log, "cluster-0", "1", [np.zeros(3 * 4096, np.uint8)])  # an encrypted one
        log.record("flower-reply", "training/global/evaluate", "server",
                   [describe_value("x", np.zeros(10**6, np.float32))])  # fmt: skip
    _reply(EgressLog(tmp_path / "site-1", "site-1", "sha256:" + "0" * 64), "global",
           "decrypt-1", model)  # fmt: skip
    out = wire_summary(tmp_path, "bfv", 1024)
    assert out["fp32_bytes"] == 4096
    assert out["per_phase"] == {"cluster-0": 3 * 4096 + 8, "global": 4096 + 8}
    assert out["rounds_measured"] == 6  # 2 sites x 3 rounds; evaluation replies not counted
    assert out["bytes_per_client_per_round"] == round((4 * (4096 + 8) + 2 * (12288 + 8)) / 6)
    assert out["decryptor_bytes_per_round"] == 4096 + 8


def test_protocol_check_states_the_upload_per_round() -> None:
    result = CliRunner().invoke(app, ["protocol", "check", str(ROOT / "protocols/demo-bfv.toml")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "upload bfv:" in text
    assert "1,401,891 values" in text
    assert "2.91x) when a phase's FedAvg weights sum to <= 1024" in text
    assert "encryption about" in text
    plain = CliRunner().invoke(app, ["protocol", "check", str(ROOT / "protocols/demo.toml")])
    assert "upload secagg+: 11.22 MB per site and round (2.00x" in " ".join(plain.output.split())


def test_report_says_when_only_the_trained_values_travel() -> None:
    from securefed.report.html import _wire_rows

    wire = {"aggregation": "secagg+", "bytes_per_client_per_round": 109_345,
            "fp32_bytes": 4_761_380, "per_phase": {"global": 109_345},
            "sent_values": 13_257}  # fmt: skip
    rows = _wire_rows(wire)
    assert rows[-1] == ["all phases", "secagg+, the 13,257 trained values only", "0.109 MB",
                        "0.02x"]  # fmt: skip
    whole = _wire_rows({**wire, "sent_values": 1_190_345})
    assert whole[-1][1] == "secagg+"
