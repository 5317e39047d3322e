"""Shared fixtures: a real etcd server per test session (and one per test where state matters)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from etcd_tls import EtcdServer, TLSFiles, TLSMaterial, make_tls

from e2e.backends import session as _session_hooks
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd


def pytest_configure(config: pytest.Config) -> None:
    _session_hooks.configure(config)  # the real e2e clusters (e2e/backends/session.py)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _session_hooks.sessionfinish(session)


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


# --- TLS (+ auth) variants -----------------------------------------------------------------------
ETCD_TEST_ROOT_PASSWORD = "rpcjob-test-root-pw"  # test-only credential of the etcd_tls_auth fixture


@pytest.fixture(scope="session")
def etcd_tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """A CA, a server certificate (127.0.0.1, localhost), a client certificate and an unrelated
    CA + client certificate (tests/etcd_tls.py)."""
    return make_tls(tmp_path_factory.mktemp("etcd-tls"))


@pytest.fixture
def etcd_tls(etcd_tls_material: TLSMaterial) -> Iterator[EtcdServer]:
    """A fresh real etcd serving TLS and requiring a client certificate (--client-cert-auth).
    Connect with ``Client(server.endpoint, **server.client_kwargs(etcd_tls_material.client))``."""
    m = etcd_tls_material
    tls = TLSFiles(ca=m.ca, cert=m.server_cert, key=m.server_key, client_cert_auth=True)
    with EtcdServer(tls=tls) as server:
        yield server


@pytest.fixture
def etcd_tls_auth(etcd_tls: EtcdServer, etcd_tls_material: TLSMaterial) -> EtcdServer:
    """``etcd_tls`` with authentication on: user ``root`` / ETCD_TEST_ROOT_PASSWORD
    (``server.auth``; ``server.client_kwargs(etcd_tls_material.client)`` includes them)."""
    etcd_tls.enable_auth(ETCD_TEST_ROOT_PASSWORD, client_tls=etcd_tls_material.client)
    return etcd_tls
