"""The simulated sites' device (`securefed run --device`, `securefed sweep --device`): on cuda
Ray gives every site an equal share of the GPU, on cpu none; a cuda device on a machine where
torch sees no GPU is refused before anything starts. The plumbing is tested on CPU here; the
GPU check itself is benchmarks/gpu_share_check.sh on a machine with one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from securefed.errors import ConfigError
from securefed.federation.config import SiteSettings
from securefed.federation.simulation import client_resources, resolve_site_device


def _sites(n: int, device: str) -> list[SiteSettings]:
    return [SiteSettings(p, "/data", "/p.toml", device=device) for p in range(1, n + 1)]


def test_each_cuda_site_asks_ray_for_an_equal_share_of_the_gpu() -> None:
    assert client_resources(_sites(3, "cpu")) == {"num_cpus": 1, "num_gpus": 0.0}
    assert client_resources(_sites(4, "cuda")) == {"num_cpus": 1, "num_gpus": 0.25}
    assert client_resources(_sites(23, "cuda:0"))["num_gpus"] == pytest.approx(1 / 23, abs=1e-4)
    assert client_resources(_sites(23, "cuda:0"))["num_gpus"] * 23 <= 1.0


def test_the_device_is_resolved_and_a_missing_gpu_refused() -> None:
    assert resolve_site_device("cpu") == "cpu"
    assert resolve_site_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="cpu, cuda, cuda:N or auto"):
        resolve_site_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no GPU"):
            resolve_site_device("cuda")


def test_run_passes_the_device_to_every_simulated_site(tmp_path: Path, monkeypatch) -> None:
    """`securefed run --device cpu` reaches the SiteSettings of the training stage."""
    from typer.testing import CliRunner

    from securefed.cli import app
    from securefed.study import runner

    seen: dict[str, str] = {}

    def fake_run_study(*args, **kwargs):
        seen["device"] = kwargs["device"]
        return {}

    monkeypatch.setattr(runner, "run_study", fake_run_study)
    res = CliRunner().invoke(app, ["run", str(tmp_path / "p.toml"), "--data", str(tmp_path),
                                   "--out", str(tmp_path / "run"), "--device", "cpu"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen == {"device": "cpu"}
