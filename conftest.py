"""Session hooks for the real e2e clusters (e2e/backends/shared.py, private.py).

Here, at the root, so that the xdist controller loads them too: it owns the session's shared
cluster and stops it once every worker is done.
"""

from __future__ import annotations

import pytest

from e2e.backends import private, shared


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")  # xdist workers have workerinput


def pytest_configure(config: pytest.Config) -> None:
    if _is_controller(config):
        shared.begin_session()


def pytest_sessionfinish(session: pytest.Session) -> None:
    private.stop()  # this process's own cluster, if a test started one
    if _is_controller(session.config):
        shared.stop_all()
