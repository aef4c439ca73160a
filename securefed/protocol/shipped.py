"""The study protocols shipped with securefed (package data, the top-level protocols/ folder of
a checkout), found through importlib.resources so that an installed wheel has them too."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from securefed.errors import ConfigError

__all__ = ["shipped_protocol", "shipped_protocols"]


def shipped_protocols() -> dict[str, Path]:
    """Name (e.g. ``demo``) -> path of every shipped protocol."""
    folder = files("securefed") / "protocols"
    return {
        entry.name.removesuffix(".toml"): Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".toml")
    }


def shipped_protocol(name: str) -> Path:
    """The path of the shipped protocol ``name`` (``demo``, ``demo-all-methods``, ...)."""
    found = shipped_protocols()
    if name not in found:
        raise ConfigError(f"no shipped protocol {name!r}; shipped: {', '.join(found)}")
    return found[name]
