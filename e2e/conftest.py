"""Session hooks that start and stop the real e2e clusters (e2e/backends/session.py); the e2e
fixtures live in e2e/tests/conftest.py."""

from __future__ import annotations

import pytest

from e2e.backends import session as _session_hooks


def pytest_configure(config: pytest.Config) -> None:
    _session_hooks.configure(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _session_hooks.sessionfinish(session)
