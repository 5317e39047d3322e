"""Runs the c10d Store contract (tests/store_contract.py) against torch's HashStore and
TCPStore (oracles) and rpcjob's EtcdStore on a real etcd: the same assertions for all three."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import torch.distributed as dist
from etcd_waits import wait_until
from store_contract import StoreContract, _in_thread

from rpcjob.store import EtcdStore
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

D: Any = dist


class HashFactory:
    kind = "hash"

    def make(self, timeout: float) -> Any:
        s = D.HashStore()
        s.set_timeout(timedelta(seconds=timeout))
        return s

    def other(self, store: Any) -> Any:
        return store

    def spec(self) -> tuple[Any, ...]:
        return ("hash",)


class TCPFactory:
    kind = "tcp"

    def __init__(self) -> None:
        self.server: Any = None

    def make(self, timeout: float) -> Any:
        if self.server is None:  # one server per test: a fresh key space
            self.server = D.TCPStore(
                "127.0.0.1", 0, 1, True, timeout=timedelta(seconds=timeout),
                wait_for_workers=False,
            )  # fmt: skip
            return self.server
        return D.TCPStore(
            "127.0.0.1", self.server.port, 1, False, timeout=timedelta(seconds=timeout)
        )

    def other(self, store: Any) -> Any:
        return self.make(timeout=30.0)  # a TCPStore client is not for concurrent blocking use

    def spec(self) -> tuple[Any, ...]:
        return ("tcp", "127.0.0.1", self.server.port)


class EtcdFactory:
    kind = "etcd"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.prefix = f"/rpcjob-contract/{uuid.uuid4().hex}/"  # a fresh key space per test
        self.stores: list[EtcdStore] = []

    def make(self, timeout: float) -> Any:
        s = EtcdStore(self.endpoint, prefix=self.prefix, timeout=timedelta(seconds=timeout))
        self.stores.append(s)
        return s

    def other(self, store: Any) -> Any:
        return store  # thread-safe: torch's C++ RPC threads share one store

    def spec(self) -> tuple[Any, ...]:
        return ("etcd", self.endpoint, self.prefix)

    def close(self) -> None:
        for s in self.stores:
            s.close()


class TestHashStore(StoreContract):
    kind = "hash"
    multi_process = False

    @pytest.fixture
    def factory(self) -> HashFactory:
        return HashFactory()


class TestTCPStore(StoreContract):
    kind = "tcp"

    @pytest.fixture
    def factory(self) -> TCPFactory:
        return TCPFactory()


class TestEtcdStore(StoreContract):
    kind = "etcd"

    @pytest.fixture
    def factory(self, etcd_session: EmbeddedEtcd) -> Iterator[EtcdFactory]:
        f = EtcdFactory(etcd_session.endpoint)
        yield f
        f.close()

    def test_wait_wakes_on_a_key_set_then_deleted_at_once(self, store: Any) -> None:
        # ORACLE_DIFFERS: TCPStore wakes its waiters on the set; HashStore re-checks on wake-up
        # and misses a key deleted meanwhile (measured: 0/3 woke). EtcdStore follows TCPStore:
        # torch's token waiter key can be set "Done" and deleted by the next holder at once.
        # Only EtcdStore can show the waiter is blocked (its watch exists) without a sleep.
        for i in range(5):
            t, result, _ = _in_thread(lambda i=i: store.wait([f"flash{i}"], timedelta(seconds=30)))
            wait_until(lambda: any(w.created.is_set() for w in store.client._mux._watches), 30)
            store.set(f"flash{i}", "1")
            store.delete_key(f"flash{i}")
            t.join(60)
            assert result == [None], (i, result)
