"""The per-field egress table (securefed.protocol.egress.egress_table): every row names the test
that shows its protection, that test exists, and docs/stages.md lists the same rows for every
release mode, so the docs, results.json and the report say the same thing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from support.site import COLUMNS

from securefed.privacy import derive_bounds, write_bounds
from securefed.protocol import load_protocol
from securefed.protocol.egress import egress_table

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "protocols" / "demo.toml"


def _protocol(
    tmp: Path, mode: str, dp_sgd: bool | str = False, aggregation: str = "secagg+",
    slot: float = 0.0,
):  # fmt: skip
    """``dp_sgd``: True for DP-SGD, ``"client-dp"`` for client-level DP; ``slot``: the reply
    pacing slot (0: unpaced)."""
    data = tomllib.loads(DEMO.read_text())
    data["training"]["aggregation"] = aggregation
    data["training"]["reply_slot_s"] = slot
    if mode != "plain":
        tmp.mkdir(parents=True, exist_ok=True)
        ref = np.random.default_rng(1).normal(size=(50, len(COLUMNS)))
        sha = write_bounds(derive_bounds(ref, COLUMNS, source="test reference"), tmp / "b.json")
        data["release"] = {"mode": mode, "bounds": {"file": "b.json", "sha256": sha}}
        if mode == "local-dp":
            data["release"].update(mechanism="gaussian", epsilon=2.0, delta=1e-6)
        data["clustering"]["scaling"] = "declared-bounds"
    if dp_sgd == "client-dp":
        data["training"]["client_dp"] = {"enabled": True, "epsilon": 2.0, "max_sites": 6}
    elif dp_sgd:
        data["training"]["dp_sgd"] = {"enabled": True, "epsilon": 2.0, "population": 6}
        data["training"]["baselines"] = ["local", "fedavg"]
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "protocol.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return load_protocol(path)


def _doc_rows() -> set[tuple[str, str]]:
    text = (ROOT / "docs" / "stages.md").read_text()
    rows = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 5:
            rows.add((cells[0], cells[1]))
    return rows


@pytest.mark.parametrize(
    ("mode", "dp_sgd", "aggregation"),
    [("plain", False, "secagg+"), ("plain", True, "secagg+"), ("local-dp", False, "secagg+"),
     ("local-dp", True, "secagg+"), ("secure-aggregate", False, "secagg+"),
     ("plain", False, "bfv"), ("local-dp", True, "bfv"), ("local-dp", "client-dp", "secagg+"),
     ("secure-aggregate", "client-dp", "secagg+")],
)  # fmt: skip
@pytest.mark.parametrize("slot", [0.0, 20.0])
def test_every_row_names_an_existing_test_and_is_in_the_docs(
    tmp_path: Path, mode: str, dp_sgd: bool | str, aggregation: str, slot: float
) -> None:
    _check_rows(egress_table(_protocol(tmp_path, mode, dp_sgd, aggregation, slot).protocol))


@pytest.mark.parametrize(("mode", "training", "summary"),
                         [("plain", False, False), ("local-dp", "client-dp", False),
                          ("local-dp", "client-dp", True)])  # fmt: skip
def test_every_deployment_row_names_an_existing_test_and_is_in_the_docs(
    tmp_path: Path, mode: str, training: bool | str, summary: bool
) -> None:
    """The deployment's stage rows (assign, test scores, the DP test summary)."""
    protocol = _protocol(tmp_path, mode, training, "secagg+", 30.0).protocol
    if summary:
        evaluation = protocol.evaluation.model_copy(
            update={"dp_summary": protocol.evaluation.dp_summary.model_copy(
                update={"epsilon": 1.0})})  # fmt: skip
        protocol = protocol.model_copy(update={"evaluation": evaluation})
    study = protocol.study.model_copy(update={"mode": "deployment"})
    rows = egress_table(protocol.model_copy(update={"study": study}))
    values = {r.value for r in rows}
    assert "assign acknowledgement" in values
    assert any(v.startswith("DP test summary") for v in values) is summary
    _check_rows(rows)


def _check_rows(rows: list) -> None:
    documented = _doc_rows()
    for row in rows:
        assert all([row.stage, row.value, row.to, row.protection, row.epsilon]), row
        assert (row.stage, row.value) in documented, f"docs/stages.md lacks {row}"
        if row.test == "-":  # only open channels and statements of "nothing leaves" go untested
            assert row.epsilon.startswith("inf") or row.to == "nobody", row
            continue
        path, _, name = row.test.partition("::")
        assert (ROOT / path).exists(), row.test
        if name:
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), row.test


@pytest.mark.parametrize("training", [True, "client-dp"])
def test_a_finite_epsilon_protocol_leaves_only_the_open_rows_unprotected(
    tmp_path: Path, training: bool | str
) -> None:
    rows = egress_table(_protocol(tmp_path, "local-dp", dp_sgd=training).protocol)
    unprotected = [r.value for r in rows if r.epsilon.startswith("inf")]
    assert unprotected == ["reply timing"]  # unpaced (simulation)
    paced = egress_table(_protocol(tmp_path / "s", "local-dp", dp_sgd=training, slot=30).protocol)
    assert [r.value for r in paced if r.epsilon.startswith("inf")] == []
    assert "30 s" in next(r.protection for r in paced if r.value == "reply timing")
    plain = egress_table(_protocol(tmp_path / "p", "plain").protocol)
    assert {"FedAvg weight", "mean train loss", "validation Dice and case count"} <= {
        r.value for r in plain if r.epsilon == "inf"
    }
