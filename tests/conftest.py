"""Shared fixtures: a real etcd server per test session (and one per test where state matters)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd


@pytest.fixture(scope="session")
def etcd_session() -> Iterator[EmbeddedEtcd]:
    """One real etcd for the whole session; tests isolate themselves with unique key prefixes."""
    with EmbeddedEtcd() as server:
        yield server


@pytest.fixture
def etcd() -> Iterator[EmbeddedEtcd]:
    """A fresh real etcd for one test (restart/stop scenarios, leak checks)."""
    with EmbeddedEtcd() as server:
        yield server


@pytest.fixture
def etcd_endpoint(etcd_session: EmbeddedEtcd) -> str:
    return etcd_session.endpoint
