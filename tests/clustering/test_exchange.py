"""The sealed cluster-model exchange (server -> site): the model round-trips exactly and assigns
as the server's; a tampered, replayed, foreign or wrong-stage envelope is refused; the site role
assigns its own cases without sending anything."""

from __future__ import annotations

import numpy as np
import pytest
from support.clustering import make_features, write_protocol

from securefed.clustering.exchange import MODEL_STAGE, open_cluster_model, seal_cluster_model
from securefed.crypto import generate_keys
from securefed.errors import ReplayError, TamperError, UnknownSenderError, WrongStageError
from securefed.protocol import load_protocol
from securefed.radiomics.table import FeatureTable
from securefed.server.cluster_model import fit_cluster_model, seal_for_sites
from securefed.site.assign import assign_own_cases
from securefed.transport import SendCounter
from securefed.transport.messages import seal_message
from securefed.trust import accept_unsigned_simulation as accepted


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exchange")
    data = make_features(0)
    loaded = load_protocol(write_protocol(folder, 'mode = "plain"', 'k = 5\nk_selection = "fixed"'))
    from support.clustering import columns

    table = FeatureTable(
        data["ids"], list(data["parts"]), list(data["splits"]), columns(), data["matrix"]
    )
    return loaded, table, fit_cluster_model(table, loaded)


@pytest.fixture
def keys():
    return {"server": generate_keys("server", "server"), "site": generate_keys("site", "site-1")}


def _seal(fitted, keys, tmp_path):
    loaded, _, fit = fitted
    return seal_cluster_model(
        fit.model, server_keys=keys["server"], site=keys["site"].public, loaded=loaded,
        counters=SendCounter(tmp_path / "server"),
    )  # fmt: skip


def _open(fitted, keys, tmp_path, envelope, **kw):
    loaded = fitted[0]
    args = {"site_keys": keys["site"], "loaded": loaded, "state_dir": tmp_path / "site",
            "server_public": (keys["server"].public,)}  # fmt: skip
    args.update(kw)
    return open_cluster_model(envelope, **args)


def test_model_round_trips_and_assigns_like_the_server(fitted, keys, tmp_path):
    _loaded, table, fit = fitted
    opened = _open(fitted, keys, tmp_path, _seal(fitted, keys, tmp_path))
    for name in ("scale_low", "scale_high", "pca_mean", "pca_components", "means", "weights"):
        np.testing.assert_array_equal(getattr(opened, name), getattr(fit.model, name))
    assert opened.columns == list(table.columns)
    assert opened.rule == fit.model.rule
    np.testing.assert_array_equal(opened.assign(table.values), fit.model.assign(table.values))


def test_tampered_replayed_foreign_and_wrong_stage_envelopes_are_refused(fitted, keys, tmp_path):
    envelope = _seal(fitted, keys, tmp_path)
    bad = bytearray(envelope)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(TamperError):
        _open(fitted, keys, tmp_path, bytes(bad))
    _open(fitted, keys, tmp_path, envelope)
    with pytest.raises(ReplayError):
        _open(fitted, keys, tmp_path, envelope)
    impostor = generate_keys("server", "server")
    with pytest.raises(UnknownSenderError):
        _open(fitted, {**keys, "server": impostor}, tmp_path / "x", _seal(
            fitted, {**keys, "server": impostor}, tmp_path / "y"
        ), server_public=(keys["server"].public,))  # fmt: skip
    other = seal_message(
        {"x": np.zeros(2)}, sender=keys["server"], recipient=keys["site"].public,
        protocol_hash=fitted[0].sha256, stage="features", counters=SendCounter(tmp_path / "z"),
    )  # fmt: skip
    with pytest.raises(WrongStageError):
        _open(fitted, keys, tmp_path / "w", other)
    assert MODEL_STAGE == "cluster-model"


def test_site_assigns_its_own_cases_from_the_sealed_model(fitted, keys, tmp_path):
    loaded, table, fit = fitted
    own = table.partition(int(table.partition_ids[0]))
    (envelope,) = seal_for_sites(
        fit.model, server_keys=keys["server"], sites={"site-1": keys["site"].public},
        loaded=loaded, counters=SendCounter(tmp_path / "server"),
    ).values()  # fmt: skip
    out = assign_own_cases(
        envelope, own, site_keys=keys["site"], accepted=accepted(loaded),
        state_dir=tmp_path / "site",
        server_public=(keys["server"].public,),
    )  # fmt: skip
    np.testing.assert_array_equal(out.labels, fit.model.assign(own.values))
    assert out.embedding.shape[0] == len(own)
