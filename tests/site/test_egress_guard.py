"""The site's guard on its feature release: what the release code hands to sealing must be exactly
what the protocol declares; anything else is refused before sealing (EgressRefusedError, exit 3),
logged as egress-refused, and no envelope is written for sending."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.site import DEMO, keys_for, local_dp_protocol, make_featdir, make_protocol

import securefed.site.release as release_module
from securefed.errors import EgressRefusedError
from securefed.protocol import load_protocol
from securefed.site.release import release_site_features
from securefed.trust import accept_unsigned_simulation as accepted


def _release(tmp_path: Path, proto: Path) -> Any:
    loaded = load_protocol(proto)
    featdir = make_featdir(tmp_path, load_protocol(DEMO).protocol.radiomics.model_dump(mode="json"))
    keys = keys_for(tmp_path)
    return release_site_features(featdir, accepted(loaded), keys["site-1"], keys["server_pub"],
                                 tmp_path / "outbox", tmp_path / "state")  # fmt: skip


def _tampering(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Make the protection step hand a modified release to the sealing callback."""
    original = release_module.protect_features

    def protect(*args: Any, write: Any = None, **kwargs: Any) -> Any:
        return original(*args, write=lambda r: write(change(r)), **kwargs)

    monkeypatch.setattr(release_module, "protect_features", protect)


def test_declared_releases_pass(tmp_path: Path) -> None:
    for sub in ("plain", "dp"):
        (tmp_path / sub).mkdir()
    assert _release(tmp_path / "plain", make_protocol(tmp_path / "plain")).cases == 6
    assert _release(tmp_path / "dp", local_dp_protocol(tmp_path / "dp")).columns == 8


def _off_grid(r: Any) -> Any:
    return dataclasses.replace(r, matrix=r.matrix + 1e-5)


def _extra_column(r: Any) -> Any:
    return dataclasses.replace(r, columns=(*r.columns[:-1], "patient_age"))


def _raised_epsilon(r: Any) -> Any:
    return dataclasses.replace(r, metadata={**r.metadata, "epsilon": 40.0})


def _nan(r: Any) -> Any:
    m = r.matrix.copy()
    m[0, 0] = np.nan
    return dataclasses.replace(r, matrix=m)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_off_grid, r"not on the 2\^-12 release grid"),
        (_extra_column, "columns differ"),
        (_raised_epsilon, "differ from the protocol's plan"),
        (_nan, "NaN or infinite"),
    ],
)
def test_undeclared_release_is_refused_before_sealing(tmp_path, monkeypatch, change, needle):
    proto = local_dp_protocol(tmp_path)
    _tampering(monkeypatch, change)
    with pytest.raises(EgressRefusedError, match=needle):
        _release(tmp_path, proto)
    assert not list((tmp_path / "outbox").glob("*.env"))
    assert '"event":"egress-refused"' in (tmp_path / "state" / "audit.jsonl").read_text()


def test_plain_release_with_a_mechanism_is_refused(tmp_path, monkeypatch) -> None:
    proto = make_protocol(tmp_path)
    _tampering(monkeypatch, lambda r: dataclasses.replace(
        r, metadata={**r.metadata, "mechanism": "gaussian"}))  # fmt: skip
    with pytest.raises(EgressRefusedError, match="plain release declares no mechanism"):
        _release(tmp_path, proto)
    assert not list((tmp_path / "outbox").glob("*.env"))
