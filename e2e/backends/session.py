"""The session hooks for the real e2e clusters (shared.py, private.py), called from both
tests/conftest.py and e2e/conftest.py: pytest loads those as initial conftests in every process,
the xdist controller included, which owns the session's shared cluster and stops it once every
worker is done. Both may call in one process: each step runs once."""

from __future__ import annotations

import pytest

from . import private, shared

_begun: list[bool] = []


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")  # xdist workers have workerinput


def configure(config: pytest.Config) -> None:
    if _is_controller(config) and not _begun:
        _begun.append(True)
        shared.begin_session()


def sessionfinish(session: pytest.Session) -> None:
    private.stop()  # this process's own cluster, if a test started one
    if _is_controller(session.config):
        shared.stop_all()
