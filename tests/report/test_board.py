"""The board's document (`securefed protocol render --format text|md|html`): every section for
every shipped protocol and for local-dp, DP-SGD and secure-aggregate variants, the protocol hash
on every page, and the HTML rendered in headless Chromium (Debian's chromium) with a screenshot."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from support.browser import inked_rows, needs_chromium, render
from support.site import COLUMNS
from typer.testing import CliRunner

from securefed.cli import app
from securefed.privacy import derive_bounds, write_bounds
from securefed.protocol import load_protocol
from securefed.report.board import board_document, render_board

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "protocols").glob("*.toml"))
TITLES = ("Identity", "Parties and keys", "What leaves each site", "Budget and noise",
          "Aggregation and minimum sizes", "What the server learns", "Who can decrypt what",
          "What each party keeps")  # fmt: skip


def _variant(tmp: Path, mode: str, dp_sgd: bool) -> Path:
    data = tomllib.loads((ROOT / "protocols" / "demo.toml").read_text())
    ref = np.random.default_rng(1).normal(size=(50, len(COLUMNS)))
    sha = write_bounds(derive_bounds(ref, COLUMNS, source="test reference"), tmp / "b.json")
    data["release"] = {"mode": mode, "bounds": {"file": "b.json", "sha256": sha}}
    if mode == "local-dp":
        data["release"].update(mechanism="gaussian", epsilon=2.0, delta=1e-6,
                               projection="random", dimension=8)  # fmt: skip
    data["clustering"]["scaling"] = "declared-bounds"
    if dp_sgd:
        data["training"]["dp_sgd"] = {"enabled": True, "epsilon": 4.0, "population": 6}
        data["training"]["baselines"] = ["local", "fedavg"]
    path = tmp / f"{mode}-{dp_sgd}.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


@pytest.fixture
def protocols(tmp_path: Path) -> list[Path]:
    return [*SHIPPED, _variant(tmp_path, "local-dp", True),
            _variant(tmp_path, "secure-aggregate", False)]  # fmt: skip


def test_every_section_and_the_hash_in_every_format(protocols: list[Path]) -> None:
    for path in protocols:
        loaded = load_protocol(path)
        doc = board_document(loaded)
        assert tuple(s.title for s in doc.sections) == TITLES
        for fmt in ("text", "md", "html"):
            body = render_board(loaded, fmt)
            assert loaded.sha256 in body
            for title in TITLES:
                assert (title.upper() if fmt == "text" else title) in body, (path.name, fmt)
        md = render_board(loaded, "md")
        assert md.count(loaded.sha256) >= len(TITLES)  # under every section
        html = render_board(loaded, "html")
        for tag in ('<header class="page">', '<footer class="page">'):
            start = html.index(tag)
            assert loaded.sha256 in html[start : html.index("</", start + 30) + 200]


def test_derived_noise_is_shown(tmp_path: Path) -> None:
    dp = render_board(load_protocol(_variant(tmp_path, "local-dp", True)), "text")
    assert "discrete gaussian on the 2^-12 grid, sigma = " in dp
    assert "Opacus, clip 1, noise multiplier " in dp
    secure = render_board(load_protocol(_variant(tmp_path, "secure-aggregate", False)), "md")
    assert "noise multiplier" in secure
    assert "colluding site(s) in an aggregate of" in secure


def test_cli_formats_and_out_file(tmp_path: Path) -> None:
    demo = str(ROOT / "protocols" / "demo.toml")
    text = CliRunner().invoke(app, ["protocol", "render", demo])
    assert text.exit_code == 0
    assert text.output.startswith("study      securefed-demo")
    out = tmp_path / "board.html"
    res = CliRunner().invoke(app, ["protocol", "render", demo, "--format", "html",
                                   "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    bad = CliRunner().invoke(app, ["protocol", "render", demo, "--format", "pdf"])
    assert bad.exit_code == 2


@needs_chromium
def test_html_renders_in_chromium_for_every_protocol(protocols: list[Path], tmp_path: Path) -> None:
    """Every protocol's page holds every section; the browser renders the longest and the
    shortest page (one template: the pages differ in which rows they hold, not in layout)."""
    pages = {path: render_board(load_protocol(path), "html") for path in protocols}
    for path, html in pages.items():
        for section in board_document(load_protocol(path)).sections:
            assert f'<section id="{section.id}">' in html, (path.name, section.id)
    by_length = sorted(pages, key=lambda p: len(pages[p]))
    for path in {by_length[0], by_length[-1]}:
        page = tmp_path / f"{path.stem}.html"
        page.write_text(pages[path])
        dom, image = render(page, tmp_path / f"{path.stem}.png", height=3200)
        for section in board_document(load_protocol(path)).sections:
            assert f'<section id="{section.id}">' in dom, (path.name, section.id)
        inked = inked_rows(image)
        assert len(inked) > 500 and inked.max() > 1500, path.name  # text all the way down
