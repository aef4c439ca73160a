"""How `make test` spreads the suite over pytest-xdist workers (``-n CORES+1 --dist loadfile``): a
file's tests run on one worker (its module fixtures are made once), the files that read one
costly session fixture run together (support.markers.SHARED_SESSION_FILES), and the longest files
start first so that none of them is left running alone at the end.

(pytest-xdist's own ``xdist_group`` mark does not group under pytest 9.2: it renames
``item._nodeid``, which pytest 9 no longer reads; hence a scheduler of our own.)"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadScopeScheduling

from support.markers import LONG_FILES, xdist_group_for

__all__ = ["FileGroupScheduling"]


class FileGroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """``--dist loadfile`` with support.markers' groups and the LONG_FILES first."""

    def _split_scope(self, nodeid: str) -> str:
        return xdist_group_for(nodeid.split("::", 1)[0])

    def _assign_work_unit(self, node: Any) -> None:
        for scope in reversed(LONG_FILES):  # the longest ends up first in the queue
            if scope in self.workqueue:
                self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)
