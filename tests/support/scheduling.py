"""How hack/test.sh spreads the suite over pytest-xdist workers (``-n 2 --dist loadgroup``, tests/conftest.py).

Work units, handed out in collection order (tests/conftest.py sorts it): the ``without_operator`` tests as one
unit (a worker runs them before anything starts its in-process operator), all e2e tests as one unit (one worker
runs them one after another, as without xdist: each starts local clusters, heavy on a small machine), then one
unit per test file, so a module's tests and its module-scoped fixtures stay together and in order.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadScopeScheduling

WITHOUT_OPERATOR = "without_operator"
E2E_PREFIX = "tests/e2e/"


def scope_of(nodeid: str) -> str:
    """The work unit of a test: its ``xdist_group`` (only ``without_operator`` is used), ``e2e``, or its file."""
    if nodeid.endswith("@" + WITHOUT_OPERATOR):  # xdist's loadgroup suffix, added in the worker
        return WITHOUT_OPERATOR
    path = nodeid.split("::", 1)[0]
    return "e2e" if path.startswith(E2E_PREFIX) else path


class SuiteScheduling(LoadScopeScheduling):
    """LoadScopeScheduling with ``scope_of`` as its units, in collection order (not reordered by size)."""

    def __init__(self, config: Any, log: Any = None) -> None:
        config.option.loadscopereorder = False  # the order tests/conftest.py gives is the order that is safe
        super().__init__(config, log)

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)
