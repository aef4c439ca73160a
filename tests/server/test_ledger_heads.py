"""The server holds each site to its ledger (privacy-claims issue, finding 7): a local-dp
release carries the site's ledger; after a collection the server keeps each site's head, and a
release whose ledger was truncated, deleted or replaced (a refunded budget) is refused; `ledger
verify --server-head` tells the site the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.site import DEMO, keys_for, local_dp_protocol, make_featdir, release_all
from typer.testing import CliRunner

from securefed.cli import app
from securefed.errors import LedgerRollbackError
from securefed.protocol import load_protocol
from securefed.server.collect import CollectionRefused, collect_features
from securefed.server.ledger_heads import HEADS_FILE
from securefed.site.release import release_site_features
from securefed.trust import accept_unsigned_simulation as accepted


def _collect(loaded, keys, inbox: Path, tmp: Path, name: str):
    return collect_features(
        inbox, loaded, keys["server"], tmp / f"collected-{name}", tmp / "server",
        site_public_keys=keys["site_pubs"],
    )  # fmt: skip


@pytest.mark.parametrize("rollback", ["delete", "truncate-to-open"])
def test_a_rolled_back_ledger_is_refused(tmp_path: Path, rollback: str) -> None:
    demo = load_protocol(DEMO)
    featdir = make_featdir(tmp_path, demo.protocol.radiomics.model_dump(mode="json"))
    proto = local_dp_protocol(tmp_path)
    loaded = load_protocol(proto)
    keys = keys_for(tmp_path)
    release_all(tmp_path, proto, featdir, keys, tmp_path / "inbox-1")
    _collect(loaded, keys, tmp_path / "inbox-1", tmp_path, "1")
    heads = json.loads((tmp_path / "server" / HEADS_FILE).read_text())
    assert set(heads) == {"site-1", "site-2", "site-3"}
    ledger = tmp_path / "state-1" / "ledger.jsonl"
    seen = f"{heads['site-1']['seq']}:{heads['site-1']['head']}"
    ok = CliRunner().invoke(app, ["ledger", "verify", str(ledger.parent), "--server-head", seen])
    assert ok.exit_code == 0, ok.output
    # The site refunds itself: its whole budget is available again ...
    if rollback == "delete":
        ledger.unlink()
    else:
        ledger.write_text(ledger.read_text().splitlines()[0] + "\n")
    bad = CliRunner().invoke(app, ["ledger", "verify", str(ledger.parent), "--server-head", seen])
    assert bad.exit_code == 3
    assert "does not extend" in bad.output or "deleted" in bad.output
    # The site itself refuses to charge a ledger that does not extend its audit log's spends ...
    with pytest.raises(LedgerRollbackError, match="does not extend what the site's audit log"):
        release_site_features(featdir, accepted(loaded), keys["site-1"], keys["server_pub"],
                              tmp_path / "inbox-x", tmp_path / "state-1")  # fmt: skip
    # ... a site that deletes its audit log too releases ...
    (tmp_path / "state-1" / "audit.jsonl").unlink()
    release_site_features(
        featdir,
        accepted(loaded),
        keys["site-1"],
        keys["server_pub"],
        tmp_path / "inbox-2",
        tmp_path / "state-1",
    )
    # ... but the server remembers: the new release is refused.
    with pytest.raises(CollectionRefused) as refused:
        _collect(loaded, keys, tmp_path / "inbox-2", tmp_path, "2")
    (problem,) = refused.value.problems
    assert isinstance(problem[1], LedgerRollbackError)
    assert refused.value.exit_code == 3
    assert "does not extend the head" in str(problem[1])


def test_a_release_must_be_charged_in_the_ledger_it_carries(tmp_path: Path) -> None:
    from securefed.server.ledger_heads import LedgerHeads

    demo = load_protocol(DEMO)
    featdir = make_featdir(tmp_path, demo.protocol.radiomics.model_dump(mode="json"))
    proto = local_dp_protocol(tmp_path)
    loaded = load_protocol(proto)
    keys = keys_for(tmp_path)
    release_all(tmp_path, proto, featdir, keys, tmp_path / "inbox")
    entries = [
        json.loads(line)
        for line in (tmp_path / "state-1" / "ledger.jsonl").read_text().splitlines()
    ]
    heads = LedgerHeads(tmp_path / "srv")
    assert heads.check("site-1", entries, entries[1]["release_id"], loaded, {}).seq == 3
    with pytest.raises(LedgerRollbackError, match="not charged"):
        heads.check("site-1", entries, "features-unknown", loaded, {})
    with pytest.raises(LedgerRollbackError, match="bound to site"):
        heads.check("site-2", entries, entries[1]["release_id"], loaded, {})
    with pytest.raises(LedgerRollbackError, match="carries no ledger"):
        heads.check("site-1", [], None, loaded, {})
    entries[1]["stage"] = "training"  # an edited entry breaks its hash
    with pytest.raises(LedgerRollbackError, match="edited or damaged"):
        heads.check("site-1", entries, None, loaded, {})
