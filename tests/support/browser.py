"""Render an HTML page in headless Chromium (Debian's ``chromium``): its DOM after the browser
parsed it and a grey-scale screenshot, so a test can check that every table and plot appears."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

HAVE_CHROMIUM = shutil.which("chromium") is not None


def render(page: Path, shot: Path, *, height: int = 2400) -> tuple[str, np.ndarray]:
    from PIL import Image

    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu"]
    subprocess.run([*base, f"--window-size=1200,{height}", f"--screenshot={shot}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)  # fmt: skip
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout  # fmt: skip
    return dom, np.asarray(Image.open(shot).convert("L"))


def images(dom: str) -> list[str]:
    """The ``src`` of every ``<img>`` in the DOM."""
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', dom)


def inked_rows(image: np.ndarray) -> np.ndarray:
    """Indices of screenshot rows holding anything darker than the background."""
    return np.flatnonzero((image < 200).any(axis=1))
