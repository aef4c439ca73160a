"""Flower's ``flower-supernode``, polling the SuperLink every 0.25 s while idle instead of 3 s.

    python -m securefed.federation.flower_supernode [flower-supernode's arguments]

Applies securefed.federation.flower_internals.shorten_supernode_idle_poll in this process, then
runs Flower's own ``flower-supernode`` entry point with the same arguments (and its exit code):
everything else (TLS, node authentication, the Runtime API, the exit codes in the log) is
Flower's. If the installed Flower's loop is not the one the patch expects, it says so on stderr
and runs Flower unpatched. securefed.federation.supernode starts the site's SuperNode this way.
Tests: ``tests/federation/test_flower_internals.py``, ``tests/federation/test_deployment.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from securefed.federation.flower_internals import flower_supernode, shorten_supernode_idle_poll

__all__ = ["IDLE_POLL_S", "main"]

IDLE_POLL_S = 0.25
"""How often an idle SuperNode asks the SuperLink for a message (Flower 1.42: every 3 s)."""


def main(argv: Sequence[str] | None = None) -> None:
    if not shorten_supernode_idle_poll(IDLE_POLL_S):
        print(
            "securefed: the installed Flower's SuperNode loop is not the one securefed patches "
            "(flower_internals.shorten_supernode_idle_poll); starting it unpatched (3 s polls)",
            file=sys.stderr,
            flush=True,
        )
    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    flower_supernode()  # exits itself on an error (Flower's exit codes)


if __name__ == "__main__":
    main()
