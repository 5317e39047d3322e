"""TLS (CA + client certificate) and user/password auth of rpcjob.etcd against a real etcd."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from conftest import ETCD_TEST_ROOT_PASSWORD
from etcd_tls import EtcdServer, TLSMaterial
from etcd_waits import Collector

from rpcjob.etcd import Client, EtcdAuthError, EtcdTLSError, EtcdUnavailable, Op
from rpcjob.etcd._pb import rpc_pb2, rpc_pb2_grpc
from rpcjob.etcd_env import ENV_NAMES

pb: Any = rpc_pb2
pbg: Any = rpc_pb2_grpc


def test_tls_with_client_certificate(etcd_tls: EtcdServer, etcd_tls_material: TLSMaterial) -> None:
    kw = etcd_tls.client_kwargs(etcd_tls_material.client)
    with Client(etcd_tls.endpoint, **kw) as c:
        c.put("k", "v")
        kv = c.get("k")
        assert kv is not None and kv.value == b"v"
        got = Collector()
        assert c.watch("k", callback=got).created.wait(10)
        c.put("k", "w")
        assert got.wait_for(1)[0].kv.value == b"w"


def test_bad_tls_setups_give_clear_errors(
    etcd_tls: EtcdServer, etcd_tls_material: TLSMaterial
) -> None:
    m, ep = etcd_tls_material, etcd_tls.endpoint
    cases: list[tuple[dict[str, str], type[Exception], str]] = [
        (  # the client does not trust the server's CA
            {"ca": m.other_ca, "cert": m.client_cert, "key": m.client_key},
            EtcdTLSError,
            f"TLS handshake with etcd at {ep} failed",
        ),
        ({"ca": m.ca}, EtcdTLSError, "RPCJOB_ETCD_CERT/RPCJOB_ETCD_KEY"),  # no client cert
        (  # a client certificate the server does not trust
            {"ca": m.ca, "cert": m.other_client_cert, "key": m.other_client_key},
            EtcdTLSError,
            "check RPCJOB_ETCD_CA",
        ),
        ({}, EtcdUnavailable, "if it serves TLS (https), set RPCJOB_ETCD_CA"),  # plaintext
    ]

    def attempt(kw: dict[str, str]) -> Exception | None:
        with Client(ep, timeout=2, names=ENV_NAMES, **kw) as c:
            try:
                c.get("k")
            except Exception as e:
                return e
            return None

    with ThreadPoolExecutor(len(cases)) as pool:  # the cases each wait out the timeout
        results = list(pool.map(attempt, [kw for kw, _, _ in cases]))
    for (kw, error, message), err in zip(cases, results, strict=True):
        assert isinstance(err, error), (kw, err)
        assert message in str(err), (kw, str(err))
        assert ep in str(err)


def test_tls_client_against_plain_etcd(etcd_endpoint: str, etcd_tls_material: TLSMaterial) -> None:
    msg = f"TLS handshake with etcd at {etcd_endpoint}"
    with (
        Client(etcd_endpoint, timeout=0.5, ca=etcd_tls_material.ca) as c,
        pytest.raises(EtcdTLSError, match=msg),
    ):
        c.get("k")


def test_tls_and_auth(etcd_tls_auth: EtcdServer, etcd_tls_material: TLSMaterial) -> None:
    kw = etcd_tls_auth.client_kwargs(etcd_tls_material.client)
    assert kw["user"] == "root" and kw["password"] == ETCD_TEST_ROOT_PASSWORD
    with Client(etcd_tls_auth.endpoint, **kw) as c:
        c.put("secure", "1")
        assert c.txn([], [Op.get("secure")]).succeeded
        lease = c.lease_grant(10)
        assert c.lease_keepalive_once(lease.id) == 10
        got = Collector()
        assert c.watch("secure", callback=got).created.wait(10)
        c.put("secure", "2")
        assert got.wait_for(1)[0].kv.value == b"2"


@pytest.fixture
def etcd_auth() -> Iterator[EtcdServer]:
    """Plain-HTTP etcd with auth on; user 'app' owns /app/."""
    with EtcdServer() as server:
        server.enable_auth("root-pw", users=[("app", "app-pw", "/app/")])
        yield server


def test_wrong_password_and_missing_credentials(etcd_auth: EtcdServer) -> None:
    ep = etcd_auth.endpoint
    with (
        Client(ep, user="app", password="not-the-password") as c,
        pytest.raises(EtcdAuthError) as info,
    ):
        c.get("/app/k")
    msg = str(info.value)
    assert msg.startswith(f"authentication failed for user 'app' at etcd {ep}: wrong password")
    assert "wrong password (password=) or unknown user (user=)" in msg  # the arguments' names
    assert "not-the-password" not in msg and "not-the-password" not in repr(info.value.__cause__)
    with Client(ep) as c, pytest.raises(EtcdAuthError, match=f"etcd at {ep} requires auth"):
        c.get("/app/k")
    with (
        Client(ep, user="app", password="app-pw") as c,
        pytest.raises(EtcdAuthError, match="denied put to user 'app'"),
    ):
        c.put("/elsewhere", "x")


def test_reauthenticates_when_etcd_drops_the_token(etcd_auth: EtcdServer) -> None:
    """etcd invalidates a user's simple tokens when the password is set again (and when they
    expire, --auth-token-ttl); the client must authenticate again and retry, txn included."""
    with Client(etcd_auth.endpoint, user="app", password="app-pw") as c:
        c.put("/app/k", "1")
        ep = c._conn.current()
        old = ep.token
        assert old
        with Client(etcd_auth.endpoint, **etcd_auth.client_kwargs()) as root:
            root.auth_call(
                "UserChangePassword",
                pb.AuthUserChangePasswordRequest(name="app", password="app-pw"),
            )
        stub = pbg.KVStub(grpc.insecure_channel(etcd_auth.endpoint))
        with pytest.raises(grpc.RpcError, match="invalid auth token"):
            stub.Range(pb.RangeRequest(key=b"/app/k"), metadata=(("token", old),), timeout=5)
        kv = c.get("/app/k")  # rejected token -> authenticate again -> retried
        assert kv is not None and kv.value == b"1"
        assert ep.token and ep.token != old
        root_kw = etcd_auth.client_kwargs()
        with Client(etcd_auth.endpoint, **root_kw) as root:
            root.auth_call(
                "UserChangePassword",
                pb.AuthUserChangePasswordRequest(name="app", password="app-pw"),
            )
        assert c.txn([], [Op.put("/app/k", "2")]).succeeded  # rejected before applying: resent
        assert c.get("/app/k").value == b"2"  # type: ignore[union-attr]


def test_auth_survives_etcd_restart(etcd_auth: EtcdServer) -> None:
    """Simple tokens live in etcd's memory: after a restart every token is invalid."""
    got = Collector()
    with Client(etcd_auth.endpoint, user="app", password="app-pw", timeout=10) as c:
        c.put("/app/r", "1")
        assert c.watch("/app/r", callback=got).created.wait(10)
        etcd_auth.restart()
        c.put("/app/r", "2")
        kv = c.get("/app/r")
        assert kv is not None and kv.value == b"2"
        assert got.wait_for(1, timeout=20)[0].kv.value == b"2"
