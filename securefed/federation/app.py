"""Where the securefed Flower app lives: a folder of package data holding only its
pyproject.toml (components, run-config defaults), found through importlib.resources so that an
installed wheel works like a source checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["APP_FOLDER", "app_dir"]

APP_FOLDER = "securefed-app"


def app_dir() -> Path:
    """The folder ``flwr run`` bundles (a FAB of its pyproject.toml alone)."""
    return Path(str(files("securefed.federation") / APP_FOLDER))
