"""The layer rule of docs/architecture.md as a contract: import-linter's contracts (layers, no
cycles, who may import Flower and Flower's internals, cryptography/TenSEAL and
pyradiomics/SimpleITK) are kept, and every package of securefed has its place in the layers."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "securefed"


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_import_contracts_are_kept() -> None:
    """import-linter sees imports inside functions too; a broken contract fails this test."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout, proc.stdout[-2000:]


def test_every_package_is_in_a_layer() -> None:
    """A new package (or top-level module) cannot escape the rule by being left out."""
    (layers,) = [c for c in _config()["contracts"] if c["type"] == "layers"]
    named = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    present = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} | {
        p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"
    }
    assert present == named, {"not in a layer": present - named, "no such package": named - present}


def test_only_the_named_packages_import_the_guarded_libraries() -> None:
    """Each guarded library is forbidden to every package but its owner."""
    (layers,) = [c for c in _config()["contracts"] if c["type"] == "layers"]
    everything = {"securefed." + n.strip() for layer in layers["layers"] for n in layer.split("|")}
    owners = {"flwr": "securefed.federation", "cryptography": "securefed.crypto",
              "radiomics": "securefed.radiomics"}  # fmt: skip
    for contract in _config()["contracts"]:
        if contract["type"] != "forbidden" or contract == _flower_internals_contract():
            continue
        (owner,) = {owners[m] for m in contract["forbidden_modules"] if m in owners}
        assert set(contract["source_modules"]) == everything - {owner}, contract["name"]


def _flower_internals_contract() -> dict:
    (contract,) = [c for c in _config()["contracts"] if c["type"] == "forbidden"
                   and all(m.startswith("flwr.") for m in c["forbidden_modules"])]  # fmt: skip
    return contract


def test_only_the_adapter_imports_flowers_internals() -> None:
    """Flower's internals are forbidden to all of securefed but its adapter
    (securefed.federation.flower_internals; tests/federation/test_flower_internals.py checks
    the rest of securefed's flwr imports against Flower's public API)."""
    contract = _flower_internals_contract()
    assert contract["source_modules"] == ["securefed"]
    assert contract.get("ignore_imports") == ["securefed.federation.flower_internals -> flwr.**"]
    assert {"flwr.proto", "flwr.supercore", "flwr.supernode", "flwr.superlink", "flwr.cli",
            "flwr.compat", "flwr.server.superlink", "flwr.server.compat"} <= set(
        contract["forbidden_modules"])  # fmt: skip
