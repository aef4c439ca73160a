"""DP-SGD with exact discrete Gaussian noise: every gradient sum is a lattice point, each patient's
rounded contribution stays within the bound B the plan's event assumes, the noise has the planned
scale, and the protocol refuses the discrete noise with amplification by sampling."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.dpsgd import PROTOCOL, dp_case

from securefed.errors import ProtocolError
from securefed.privacy import read_ledger
from securefed.privacy.noise import SecureNoise, UnsafeSeededNoise
from securefed.protocol import load_protocol
from securefed.training import dpsgd
from securefed.training.discrete_dpsgd import (
    GRID_BITS,
    DiscreteGaussianDPOptimizer,
    lattice_step,
)
from securefed.training.local import get_weights, prepare_volumes

DISCRETE = 'max_grad_norm = 1.0\namplification = "none"\nnoise = "discrete-gaussian"'


def _protocol(extra: str = DISCRETE, rounds: int = 2):
    text = PROTOCOL.format(rounds=rounds, finetune=0, enabled="true")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "protocol.toml"
        if "amplification" in extra:  # no sampling: no population to declare
            text = text.replace("population = 8\n", "")
        path.write_text(text.replace("max_grad_norm = 1.0", extra))
        return load_protocol(path)


def _optimizer(model: torch.nn.Module, m: float, batch: int, noise=None, seed=1):
    return DiscreteGaussianDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=m, max_grad_norm=1.0,
        expected_batch_size=batch, noise=noise or UnsafeSeededNoise(seed, "t"), rounding_seed=seed,
    )  # fmt: skip


def _set_grad_samples(model: torch.nn.Module, samples: list[np.ndarray]) -> None:
    """Per-sample gradients (one flat vector per sample) as Opacus's ``p.grad_sample``."""
    flat = torch.tensor(np.stack(samples), dtype=torch.float64)
    offset = 0
    for p in model.parameters():
        k = p.numel()
        p.grad_sample = flat[:, offset : offset + k].reshape(len(samples), *p.shape).to(p.dtype)
        offset += k


def test_rounding_costs_under_a_thousandth_of_the_sensitivity_at_model_size() -> None:
    lat = lattice_step(1.0, 1_190_345, noise_multiplier=3.0)
    units = 2.0**GRID_BITS
    assert units < lat.bound < units * 1.001
    assert lat.gamma == 1.0 / units
    # The charged event GaussianDpEvent(m / 2) is sigma / (2 B): exactly the plan's multiplier.
    assert lat.sigma_units / (2 * lat.bound) == pytest.approx(3.0 / 2, rel=1e-12)
    assert lat.noise_std == pytest.approx(3.0 * lat.bound / units)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4),
    st.floats(1e-3, 1e3),
    st.integers(0, 2**32 - 1),
)
def test_every_rounded_contribution_is_within_the_bound(batch: int, scale: float, seed: int):
    """Whatever the gradients (tiny or far above C), each sample's lattice vector has L2 norm at
    most B, so one patient replaced moves the integer sum by at most 2B: the plan's event."""
    model = torch.nn.Linear(6, 3, dtype=torch.float64)
    dim = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(seed)
    samples = [rng.normal(0, scale, dim) for _ in range(batch)]
    opt = _optimizer(model, 1.0, batch, seed=seed)
    lat = opt.lattice
    for i in range(batch):
        _set_grad_samples(model, [samples[i]])
        opt.clip_and_accumulate()
        one = opt._integer_sum
        assert one is not None
        assert one.dtype == np.int64
        assert math.sqrt(float(np.dot(one, one))) <= lat.bound
        # Unbiased rounding of the clipped vector: never off by a grid unit per value.
        clipped = samples[i] * min(1.0, 1.0 / np.linalg.norm(samples[i])) / lat.gamma
        assert np.all(np.abs(one - clipped) < 1.0)
        opt._integer_sum = None
        for p in model.parameters():
            del p.grad_sample


def test_released_gradient_sums_are_lattice_points_with_the_planned_noise() -> None:
    """Exact OpenDP noise: batch x grad / gamma is an integer per value (the float replay of
    Mironov's attack has nothing to read), centred on the rounded clipped sum, with standard
    deviation m B gamma."""
    model = torch.nn.Linear(20, 10, dtype=torch.float64)  # 210 values
    dim = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    samples = [rng.normal(0, 1, dim) for _ in range(2)]
    clipped = sum(s / max(1.0, np.linalg.norm(s)) for s in samples)
    m = 0.5
    opt = _optimizer(model, m, batch=2, noise=SecureNoise())
    released = []
    for _ in range(8):
        _set_grad_samples(model, samples)
        opt.clip_and_accumulate()
        opt.add_noise()
        opt.scale_grad()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy() * 2
        units = g / opt.lattice.gamma
        assert np.array_equal(units, np.rint(units))
        released.append(g)
        for p in model.parameters():
            del p.grad_sample
            p.grad = None
    noise = np.stack(released) - clipped
    assert noise.std() == pytest.approx(opt.lattice.noise_std, rel=0.1)  # 1680 draws
    assert abs(noise.mean()) < 4 * opt.lattice.noise_std / math.sqrt(noise.size)


def test_protocol_refuses_discrete_noise_with_amplification_by_sampling() -> None:
    with pytest.raises(ProtocolError, match="amplification = 'none'"):
        _protocol('max_grad_norm = 1.0\nnoise = "discrete-gaussian"')
    assert _protocol().protocol.training.dp_sgd.noise == "discrete-gaussian"
    assert _protocol("max_grad_norm = 1.0").protocol.training.dp_sgd.noise == "float"


def test_a_discrete_round_trains_charges_the_ledger_and_reports_its_noise(tmp_path) -> None:
    """``train_dp_round`` with the protocol's discrete noise: charged once before the noise,
    the event unchanged (``GaussianDpEvent(m / 2)`` per step), the model moved."""
    loaded = _protocol()
    plan = dpsgd.plan_dpsgd(loaded.protocol)
    assert plan.noise == "discrete-gaussian"
    assert plan.sampling == "none"
    spec = loaded.protocol.training
    model = torch.nn.Conv3d(4, 3, kernel_size=1)  # 15 values: the exact sampler stays quick
    before = get_weights(model)
    ledger = dpsgd.site_ledger(loaded, 1, tmp_path)
    data = prepare_volumes([dp_case("a"), dp_case("b"), dp_case("c")], spec)
    out = dpsgd.train_dp_round(model, data, spec, plan=plan, ledger=ledger, release_id="r1",
                               lr=0.05, seed=0)  # fmt: skip
    assert out["noise"] == "discrete-gaussian"
    assert out["steps"] == 1
    assert any(not np.allclose(a, b) for a, b in zip(before, get_weights(model), strict=True))
    assert list(read_ledger(tmp_path / "ledger.jsonl").committed) == ["r1"]
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
