"""Public pretraining: `securefed pretrain` writes weights a protocol pins; every site starts from
them after checking the hash; a changed or foreign file is refused before any training; with
``training.trainable`` DP-SGD changes only the named blocks."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from support.dpsgd import LAYOUT, PROTOCOL, dp_task
from support.flower import write_assignments
from support.training import write_case
from typer.testing import CliRunner

from securefed.cli import app
from securefed.errors import ProtocolError
from securefed.federation.client_app import SiteClient
from securefed.federation.config import SiteSettings
from securefed.models import build_model, count_parameters
from securefed.protocol import file_sha256, load_protocol, parse_protocol
from securefed.training.checkpoints import load_weights, save_weights
from securefed.training.local import get_weights, set_weights
from securefed.training.pretrained import initial_weights

runner = CliRunner()


def _protocol(
    folder: Path, weights: Path | None, *, trainable: str = "all", dp: bool = True
) -> Path:
    text = PROTOCOL.format(rounds=2, finetune=0, enabled=str(dp).lower())
    extra = f'model = "dp-unet"\ntrainable = "{trainable}"\n'
    if weights is not None:
        extra += (
            f'[training.initial_weights]\nfile = "{weights.name}"\n'
            f'sha256 = "{file_sha256(weights)}"\n'
        )
    text = text.replace('aggregation = "fedavg"\n', 'aggregation = "fedavg"\n' + extra)
    path = folder / "protocol.toml"
    path.write_text(text)
    return path


def _site(folder: Path, proto: Path) -> SiteClient:
    asg = write_assignments(folder / "clusters.csv", LAYOUT)
    site = SiteSettings(1, str(folder), str(proto), work_dir=str(folder / "site1"),
                        assignments=str(asg))  # fmt: skip
    return SiteClient(dp_task(), site)


def _config(client: SiteClient, rnd: int) -> dict:
    # coordinates only: the site takes its work from its protocol
    return {"protocol-hash": client.loaded.sha256, "server-round": rnd, "cluster": -1}


@pytest.fixture(scope="module")
def public_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`securefed pretrain` on four tiny public cases (written as NIfTI)."""
    root = tmp_path_factory.mktemp("public")
    data = root / "data"
    for i in range(4):
        write_case(data, i, spacing=1.0)
    proto = _protocol(root, None)
    out = root / "public.npz"
    res = runner.invoke(app, ["pretrain", str(proto), "--data", str(data), "--out", str(out),
                              "--source", "tiny test phantoms", "--steps", "3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert file_sha256(out) in res.output
    assert "[training.initial_weights]" in res.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sha256"] == file_sha256(out)
    assert meta["cases"] == 4
    assert meta["steps"] == 3
    assert meta["model"] == "dp-unet"
    assert meta["source"] == "tiny test phantoms"
    again = runner.invoke(app, ["pretrain", str(proto), "--data", str(data), "--out", str(out),
                                "--source", "x", "--steps", "1"])  # fmt: skip
    assert again.exit_code != 0
    assert "--force" in again.output
    return out


def test_every_site_starts_from_the_pinned_public_weights(tmp_path: Path, public_weights) -> None:
    weights = tmp_path / public_weights.name
    weights.write_bytes(public_weights.read_bytes())
    client = _site(tmp_path, _protocol(tmp_path, weights))
    pinned = load_weights(weights)
    seeded = get_weights(build_model(client.spec))
    assert any(not np.array_equal(a, b) for a, b in zip(pinned, seeded, strict=True))
    pinned_model = build_model(client.spec)
    set_weights(pinned_model, pinned)
    sent = client.get_parameters({})  # what the server asks a site for as the phase's start
    expected = client.task.get_weights(pinned_model)
    assert all(np.array_equal(a, b) for a, b in zip(sent, expected, strict=True))
    full = initial_weights(client.loaded)
    assert full is not None
    assert all(np.array_equal(a, b) for a, b in zip(full, pinned, strict=True))


def test_a_changed_or_foreign_weights_file_is_refused_before_training(
    tmp_path: Path, public_weights
) -> None:
    weights = tmp_path / public_weights.name
    weights.write_bytes(public_weights.read_bytes())
    client = _site(tmp_path, _protocol(tmp_path, weights))
    arrays = load_weights(weights)
    arrays[0] = arrays[0] + 1e-3  # the file changes after the protocol pinned it
    save_weights(weights, arrays)
    with pytest.raises(ProtocolError, match="training.initial_weights.sha256"):
        client.get_parameters({})
    assert not (tmp_path / "site1" / "ledger.jsonl").exists()  # nothing charged, nothing trained
    # A file made for another model (pinned correctly) is refused by shape, naming the field.
    other = tmp_path / "other"
    other.mkdir()
    foreign = other / "foreign.npz"
    save_weights(foreign, [np.zeros((3, 3), np.float32)])
    loaded = load_protocol(_protocol(other, foreign))
    with pytest.raises(ProtocolError, match="do not match the protocol's model"):
        initial_weights(loaded)


def test_dp_sgd_changes_only_the_trained_blocks(tmp_path: Path, public_weights) -> None:
    """With trainable = "outer-blocks", a DP-SGD reply holds only the two outer blocks' arrays
    (13,257 values), each changed by the noised step; no other array leaves the site, and the
    site's own model keeps the public start outside them, bit for bit."""
    weights = tmp_path / public_weights.name
    weights.write_bytes(public_weights.read_bytes())
    client = _site(tmp_path, _protocol(tmp_path, weights, trainable="outer-blocks"))
    model = build_model(client.spec)
    assert count_parameters(model) == 13_257
    start = client.get_parameters({})
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(start)  # dp-unet: one array per parameter, no buffers
    trained = [i for i, n in enumerate(names) if n.startswith(("model.0.", "model.2."))]
    reply, _, _ = client.fit(start, _config(client, 1))
    assert [a.shape for a in reply] == [start[i].shape for i in trained]
    assert sum(int(a.size) for a in reply) == 13_257
    assert all(not np.array_equal(a, start[i]) for a, i in zip(reply, trained, strict=True))
    # What the site trained on: the frozen arrays never moved (only trained ones get noise).
    trained_model = client._model(start, 0)
    client._fit_dp(trained_model, client._data(_config(client, 2), "train")[0],
                   _config(client, 2), 2, 2, 0)  # fmt: skip
    after = client.task.get_weights(trained_model)
    for i, (a, b) in enumerate(zip(start, after, strict=True)):
        assert np.array_equal(a, b) != (i in trained), names[i]


def test_trainable_blocks_need_the_dp_unet() -> None:
    base = PROTOCOL.format(rounds=1, finetune=0, enabled="false")
    text = base.replace(
        'aggregation = "fedavg"\n', 'aggregation = "fedavg"\ntrainable = "output-block"\n'
    )
    with pytest.raises(ProtocolError, match="training.trainable"):
        parse_protocol(tomllib.loads(text))
    ok = text.replace('trainable = "output-block"', 'model = "dp-unet"\ntrainable = "output-block"')
    proto = parse_protocol(tomllib.loads(ok))
    assert count_parameters(build_model(proto.training)) == 2_841


def test_shipped_public_start_matches_its_protocol_and_provenance() -> None:
    """protocols/demo-dpsgd-public.toml pins demo-public-dpunet.npz: the hash holds, the arrays fit
    the dp-unet, and the provenance beside it names the same file and hash."""
    from securefed.protocol.shipped import shipped_protocol

    loaded = load_protocol(shipped_protocol("demo-dpsgd-public"))
    spec = loaded.protocol.training
    assert spec.trainable == "outer-blocks"
    assert spec.dp_sgd.enabled
    weights = initial_weights(loaded)
    assert weights is not None
    assert len(weights) == len(get_weights(build_model(spec)))
    pinned = spec.initial_weights
    assert pinned is not None
    meta = json.loads(loaded.resolve(pinned.file).with_suffix(".json").read_text())
    assert meta["sha256"] == pinned.sha256
    assert meta["weights"] == pinned.file
    assert meta["model"] == "dp-unet"
    assert "no patient data" in meta["source"]


def test_bias_only_finetuning_trains_every_bias_and_nothing_else() -> None:
    base = PROTOCOL.format(rounds=1, finetune=0, enabled="true")
    text = base.replace(
        'aggregation = "fedavg"\n', 'aggregation = "fedavg"\ntrainable = "biases"\n'
    )
    model = build_model(parse_protocol(tomllib.loads(text)).training)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained
    assert all(n.endswith(".bias") for n in trained)
    assert count_parameters(model) == 822
    assert count_parameters(model, trainable_only=False) == 1_190_345
