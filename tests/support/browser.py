"""Render an HTML page in headless Chromium (Debian's ``chromium``): its DOM after the browser
parsed it and a grey-scale screenshot, so a test can check that every table and plot appears.

Without Chromium a browser check is a visible skip with its reason (``require_chromium()`` or the
``needs_chromium`` mark), never a silent pass; `.ci/run` installs it so that CI renders every
report."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

__all__ = [
    "CHROMIUM_MISSING",
    "HAVE_CHROMIUM",
    "images",
    "inked_rows",
    "needs_chromium",
    "render",
    "require_chromium",
]

HAVE_CHROMIUM = shutil.which("chromium") is not None
CHROMIUM_MISSING = "chromium not installed: apt-get install chromium"

needs_chromium = pytest.mark.skipif(not HAVE_CHROMIUM, reason=CHROMIUM_MISSING)
"""Mark for a test that is only a browser check."""


def require_chromium() -> None:
    """Skip the calling test, saying why, where Chromium is absent (for a test whose browser
    check comes after other checks: call it where the browser is needed)."""
    if not HAVE_CHROMIUM:
        pytest.skip(CHROMIUM_MISSING)


def render(page: Path, shot: Path, *, height: int = 2400) -> tuple[str, np.ndarray]:
    from PIL import Image

    # its own profile folder: two browsers at once (pytest-xdist workers) never share one
    with tempfile.TemporaryDirectory(prefix="securefed-chromium-") as profile:
        base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                f"--user-data-dir={profile}"]  # fmt: skip
        subprocess.run([*base, f"--window-size=1200,{height}", f"--screenshot={shot}",
                        page.as_uri()], check=True, capture_output=True, timeout=120)  # fmt: skip
        dom = subprocess.run([*base, "--dump-dom", page.as_uri()], check=True,
                             capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    return dom, np.asarray(Image.open(shot).convert("L"))


def images(dom: str) -> list[str]:
    """The ``src`` of every ``<img>`` in the DOM."""
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', dom)


def inked_rows(image: np.ndarray) -> np.ndarray:
    """Indices of screenshot rows holding anything darker than the background."""
    return np.flatnonzero((image < 200).any(axis=1))
