"""The one Jinja2 environment factory of every HTML document securefed writes: the study report
and the board document (``securefed.report``), the audit report (``securefed.audit``) and the
sweep report (``securefed.sweep``), each from its package's ``templates/`` folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

__all__ = ["template_environment"]


def template_environment(
    package: str,
    *,
    trim_blocks: bool = False,
    filters: Mapping[str, Callable[..., Any]] | None = None,
) -> Environment:
    """A Jinja2 environment over ``package``'s ``templates/`` folder: autoescaped HTML
    (``.html`` and ``.j2`` files, and templates from strings), a missing variable is an error
    (``StrictUndefined``); ``trim_blocks`` also strips the newline and indentation around block
    tags; ``filters`` are added by name."""
    env = Environment(
        loader=PackageLoader(package, "templates"),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=trim_blocks,
        lstrip_blocks=trim_blocks,
    )
    env.filters.update(filters or {})
    return env
