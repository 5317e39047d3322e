"""EtcdStore under faults on a real etcd: restart mid-run (calls and a pending wait resume, no
lost wake-up), etcd down (fails within the store timeout, naming the endpoint), and the clear
errors of a wrong password, a bad certificate and an unreachable endpoint — through the store
and through the ``etcd3://`` init_method."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
import torch.distributed as dist
from etcd_tls import TLSMaterial
from etcd_waits import wait_until
from fault_proxy import FaultProxy, cut_after

import rpcjob  # noqa: F401  (registers etcd3://)
from rpcjob.contract import ENV_ETCD_PASSWORD
from rpcjob.etcd import (
    Client,
    Compare,
    EtcdAuthError,
    EtcdOutcomeUnknown,
    EtcdTLSError,
    EtcdUnavailable,
    Op,
)
from rpcjob.store import EtcdStore
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd, free_port

D: Any = dist
SLACK_S = 10.0  # 2 shared cores: "within the timeout" gets generous slack


def _raises_within(fn: Callable[[], Any], limit: float) -> BaseException:
    t0 = time.monotonic()
    try:
        fn()
    except BaseException as e:
        took = time.monotonic() - t0
        assert took <= limit, f"failed only after {took:.1f}s (limit {limit}s): {e}"
        return e
    raise AssertionError("the call did not fail")


def _watch_created(store: EtcdStore) -> bool:
    # private, test-only: the waiter's watch is registered on the client's stream
    mux = store.client._mux
    return any(w.created.is_set() for w in mux._watches)


def test_restart_mid_run_calls_and_pending_wait_resume(etcd: EmbeddedEtcd) -> None:
    store = EtcdStore(etcd.endpoint, prefix="/faults/restart/", timeout=timedelta(seconds=60))
    store.set("before", "1")
    assert store.add("ctr", 1) == 1
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(store.wait(["after"])), daemon=True)
    waiter.start()
    wait_until(lambda: _watch_created(store), 30, "the waiter's watch")

    etcd.restart()  # same data dir, same port
    other = EtcdStore(etcd.endpoint, prefix="/faults/restart/", timeout=timedelta(seconds=60))
    other.set("after", "x")  # may land before the first client's watch stream is back
    waiter.join(60)
    assert not waiter.is_alive() and result == [None]

    assert store.get("before") == b"1"  # the store's own calls resume
    assert store.add("ctr", 1) == 2
    assert store.compare_set("tok", "", "me") == b"me"
    other.close()
    store.close()


def test_restart_while_waiting_on_a_key_set_during_downtime_of_the_watch(
    etcd: EmbeddedEtcd,
) -> None:
    # The key is set by another client right after etcd comes back; the waiter's stream
    # resumes from its last revision + 1 and must see it. Repeated to catch ordering races.
    store = EtcdStore(etcd.endpoint, prefix="/faults/loop/", timeout=timedelta(seconds=60))
    for i in range(3):
        result: list[Any] = []
        t = threading.Thread(
            target=lambda i=i, out=result: out.append(store.get(f"k{i}")), daemon=True
        )
        t.start()
        wait_until(lambda: _watch_created(store), 30, "the waiter's watch")
        etcd.stop()
        etcd.restart()
        with EtcdStore(etcd.endpoint, prefix="/faults/loop/") as setter:
            setter.set(f"k{i}", str(i))
        t.join(60)
        assert result == [str(i).encode()], result
    store.close()


def test_etcd_down_calls_fail_within_the_store_timeout_naming_the_endpoint(
    etcd: EmbeddedEtcd,
) -> None:
    store = EtcdStore(etcd.endpoint, prefix="/faults/down/", timeout=timedelta(seconds=2))
    store.set("k", "v")
    etcd.stop()
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: store.get("k"),
        "set": lambda: store.set("k", "w"),
        "add": lambda: store.add("n", 1),
        "compare_set": lambda: store.compare_set("t", "", "x"),
        "wait": lambda: store.wait(["missing"]),
        "num_keys": store.num_keys,
    }
    # all at once (the store is thread-safe): each still fails within its own timeout
    with ThreadPoolExecutor(len(calls)) as pool:
        failed = pool.map(lambda call: _raises_within(call, 2.0 + SLACK_S), calls.values())
        errors = dict(zip(calls, failed, strict=True))
    for name, err in errors.items():
        assert isinstance(err, D.DistNetworkError) and isinstance(err, EtcdUnavailable), err
        assert etcd.endpoint in str(err) and f"EtcdStore.{name}" in str(err), err
    store.close()


def test_unreachable_endpoint_store_and_init_method(etcd_session: EmbeddedEtcd) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = EtcdStore(dead, prefix="/x/", timeout=timedelta(seconds=1))
    err = _raises_within(lambda: store.get("k"), 1.0 + SLACK_S)
    assert isinstance(err, EtcdUnavailable) and dead in str(err) and "unreachable" in str(err)
    store.close()

    url = f"etcd3://{dead}/job/store/?timeout=1"
    err = _raises_within(lambda: next(D.rendezvous(url, rank=0, world_size=1)), 1.0 + SLACK_S)
    assert isinstance(err, EtcdUnavailable) and dead in str(err)


def test_wrong_password_store_and_init_method(
    etcd_tls_auth: EmbeddedEtcd, etcd_tls_material: TLSMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = etcd_tls_material
    user, password = etcd_tls_auth.auth or ("", "")
    wrong = password + "-wrong"
    store = EtcdStore(
        etcd_tls_auth.endpoint, prefix="/x/", timeout=timedelta(seconds=5), ca=m.ca,
        cert=m.client_cert, key=m.client_key, user=user, password=wrong,
    )  # fmt: skip
    err = _raises_within(lambda: store.set("k", "v"), 5.0 + SLACK_S)
    assert isinstance(err, D.DistStoreError) and isinstance(err, EtcdAuthError), err
    assert user in str(err) and wrong not in str(err) and password not in str(err)
    store.close()

    monkeypatch.setenv(ENV_ETCD_PASSWORD, wrong)
    q = f"timeout=5&ca={quote(m.ca)}&cert={quote(m.client_cert)}&key={quote(m.client_key)}"
    url = f"etcd3://{etcd_tls_auth.endpoint}/job/store/?{q}&user={user}"
    err = _raises_within(lambda: next(D.rendezvous(url, rank=0, world_size=1)), 5.0 + SLACK_S)
    assert isinstance(err, EtcdAuthError) and wrong not in str(err), err

    monkeypatch.setenv(ENV_ETCD_PASSWORD, password)  # the right one works
    store2, rank, world = next(D.rendezvous(url, rank=3, world_size=4))
    assert (rank, world) == (3, 4)
    store2.set("k", "v")
    assert store2.get("k") == b"v"


def test_bad_certificate_and_wrong_ca(
    etcd_tls: EmbeddedEtcd, etcd_tls_material: TLSMaterial
) -> None:
    m = etcd_tls_material
    cases = {
        "client cert from an unrelated CA": (m.ca, m.other_client_cert, m.other_client_key),
        "server not signed by the given CA": (m.other_ca, m.client_cert, m.client_key),
        "no client certificate": (m.ca, None, None),
    }

    def failure(case: tuple[str, str | None, str | None]) -> BaseException:
        ca, cert, key = case
        store = EtcdStore(
            etcd_tls.endpoint, prefix="/x/", timeout=timedelta(seconds=2), ca=ca, cert=cert,
            key=key,
        )  # fmt: skip
        try:
            return _raises_within(lambda: store.get("k"), 2.0 + SLACK_S)
        finally:
            store.close()

    with ThreadPoolExecutor(len(cases)) as pool:  # independent stores: all at once
        errors = dict(zip(cases, pool.map(failure, cases.values()), strict=True))
    for why, err in errors.items():
        assert isinstance(err, D.DistNetworkError), (why, err)
        assert isinstance(err, EtcdTLSError | EtcdUnavailable), (why, err)
        assert etcd_tls.endpoint in str(err), (why, err)
    good = EtcdStore(
        etcd_tls.endpoint, prefix="/x/", timeout=timedelta(seconds=10), ca=m.ca,
        cert=m.client_cert, key=m.client_key,
    )  # fmt: skip
    good.set("k", "v")
    assert good.get("k") == b"v"
    good.close()


def test_token_release_cut_off_is_settled_never_resent_blindly(etcd_session: EmbeddedEtcd) -> None:
    """torch's membership token release, ``set(token, "")``, broken mid-call: applied and then
    taken by the next joiner, it must not be sent again (that would wipe the next holder's
    token); never applied, it is sent again conditionally; applied, it is not sent twice."""
    prefix = f"/store-faults/{uuid.uuid4().hex}/"
    token = "RpcGroupManagementToken"
    with (
        FaultProxy(etcd_session.endpoint) as proxy,
        EtcdStore(proxy.endpoint, prefix=prefix, timeout=timedelta(seconds=30)) as store,
        Client(etcd_session.endpoint) as direct,
    ):
        key = prefix + token

        def token_is(value: bytes) -> Callable[[], bool]:
            return lambda: getattr(direct.get(key), "value", None) == value

        # 1. Applied, then the next joiner takes the token: raise, leave its token alone.
        assert store.compare_set(token, "", "Token_A") == b"Token_A"
        fut = cut_after(proxy, "replies", lambda: store.set(token, ""), token_is(b""))
        assert direct.txn([Compare.value(key, "=", "")], [Op.put(key, "Token_B")]).succeeded
        err = fut.exception(timeout=60)
        assert isinstance(err, D.DistNetworkError) and isinstance(err, EtcdOutcomeUnknown), err
        assert f"EtcdStore.set('{token}')" in str(err) and "outcome is unknown" in str(err)
        assert token_is(b"Token_B")()

        # 2. Never reached etcd: sent again on the condition that the token is unchanged.
        direct.put(key, "Token_A")
        assert store.get(token) == b"Token_A"  # connected again through the proxy
        version = direct.get(key).version  # type: ignore[union-attr]
        fut = cut_after(
            proxy, "requests", lambda: store.set(token, ""), lambda: proxy.swallowed > 0
        )
        assert fut.result(timeout=60) is None
        kv = direct.get(key)
        assert kv is not None and (kv.value, kv.version) == (b"", version + 1)

        # 3. Applied and nobody wrote since: done, not sent a second time.
        direct.put(key, "Token_C")
        assert store.get(token) == b"Token_C"
        version = direct.get(key).version  # type: ignore[union-attr]
        fut = cut_after(proxy, "replies", lambda: store.set(token, ""), token_is(b""))
        assert fut.result(timeout=60) is None
        kv = direct.get(key)
        assert kv is not None and (kv.value, kv.version) == (b"", version + 1)

        # 4. delete_key never reached etcd: deleted conditionally; multi_set likewise.
        assert store.get(token) == b""
        fut = cut_after(
            proxy, "requests", lambda: store.delete_key(token), lambda: proxy.swallowed > 0
        )
        assert fut.result(timeout=60) is True and direct.get(key) is None
        store.multi_set(["a", "b"], ["0", "0"])  # connected again; keys that exist
        fut = cut_after(proxy, "requests", lambda: store.multi_set(["a", "b"], ["1", "2"]),
                         lambda: proxy.swallowed > 0)  # fmt: skip
        assert fut.result(timeout=60) is None
        assert store.multi_get(["a", "b"]) == [b"1", b"2"]
