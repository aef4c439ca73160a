"""Verified before use, by type (hostile-coordinator issue): the site-side entry points take an
AcceptedProtocol (what securefed.trust.verify_for_site returns, or accept_unsigned_simulation for
a simulation protocol), so calling one with a LoadedProtocol fails the type check (mypy, in
`make lint`) and, at run time, the call."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from securefed.errors import InternalError, SiteTrustError
from securefed.federation.site_runtime import SiteRuntime
from securefed.protocol import load_protocol
from securefed.site.assign import assign_own_cases
from securefed.site.release import release_site_features
from securefed.trust import AcceptedProtocol, accept_unsigned_simulation

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {release_site_features: "accepted", assign_own_cases: "accepted"}


def test_site_entry_points_require_an_accepted_protocol() -> None:
    for fn, name in ENTRY_POINTS.items():
        assert typing.get_type_hints(fn)[name] is AcceptedProtocol, fn.__name__
    assert typing.get_type_hints(SiteRuntime.accepted)["return"] is AcceptedProtocol


def test_a_loaded_protocol_is_refused_at_run_time(tmp_path: Path) -> None:
    loaded = load_protocol(ROOT / "protocols" / "demo.toml")
    with pytest.raises(InternalError, match="not accepted by the site"):
        release_site_features(tmp_path, loaded, None, None, tmp_path, tmp_path)  # type: ignore[arg-type]


def test_only_a_simulation_protocol_is_accepted_unsigned() -> None:
    loaded = load_protocol(ROOT / "protocols" / "demo.toml")
    assert accept_unsigned_simulation(loaded).unsigned
    deployment = loaded.protocol.model_copy(update={"study": loaded.protocol.study.model_copy(
        update={"mode": "deployment"})})  # fmt: skip
    fake = type(loaded)(**{**loaded.__dict__, "protocol": deployment})
    with pytest.raises(SiteTrustError, match="deployment protocol"):
        accept_unsigned_simulation(fake)


@pytest.mark.slow
def test_mypy_refuses_a_call_with_an_unverified_protocol(tmp_path: Path) -> None:
    from mypy import api

    snippet = tmp_path / "caller.py"
    snippet.write_text(
        "from pathlib import Path\n"
        "from securefed.protocol import load_protocol\n"
        "from securefed.site.release import release_site_features\n"
        "def release(keys, server) -> None:  # type: ignore[no-untyped-def]\n"
        "    loaded = load_protocol(Path('p.toml'))\n"
        "    release_site_features(Path('f'), loaded, keys, server, Path('o'), Path('s'))\n"
    )
    out, _, status = api.run([str(snippet), "--follow-imports=silent", "--no-error-summary",
                              "--cache-dir", str(ROOT / ".mypy_cache")])  # fmt: skip
    assert status != 0 and 'incompatible type "LoadedProtocol"' in out, out
