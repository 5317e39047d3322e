"""The c10d store handed to torch: a thin guard around the EtcdStore.

See docs/architecture.md#recovery.

It fixes what torch's membership critical section gets wrong, without touching torch:

* Torch's join error path calls ``rpc.shutdown()`` while still holding its own join token, so
  its leave waits on itself until the store timeout (measured: a join racing a dead member
  hangs ``rpc_timeout`` seconds). Waiting on the token this process holds raises at once.
* A waiter key left at "Done" by an earlier hold of the same token makes torch's waiters spin
  (``wait`` returns at once and they retry). The key is deleted before taking the token.
* A crashed earlier incarnation of the same worker name may still hold the token under the
  *same* value; torch would think it holds it. We wait until the cleaner takes it over.
* A failed join leaves its token and half-written keys behind: the sidecar ends that
  incarnation like a crash, and its cleaner (``rpcjob.sidecar.cleanup``) takes the token over,
  repairs the keys and has the survivors evict the half-joined identity.
* While this process holds the join token, the members' addresses (``addrs/<name>``) cannot
  change (a member writes its own only under the token): the joiner's N lookups are served
  from one prefix read instead of N round trips to etcd.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from rpcjob import torchkeys as tk
from rpcjob.store import as_bytes

ADDRS = "/addrs/"
_STALE_HOLDER_POLL_S = 0.05


class TokenSelfWait(RuntimeError):
    """Torch tried to wait for the membership token this very process holds."""


class GuardStore(dist.Store):  # type: ignore[misc,name-defined]
    def __init__(self, inner: Any, name: str, rank: int) -> None:
        super().__init__()
        self.inner = inner
        self.name = name
        self.rank = rank
        self._lock = threading.Lock()
        self.holding: str | None = None  # the token value this process holds now
        self._timeout = timedelta(seconds=60)
        self._addrs: dict[str, bytes] | None = None  # snapshot while holding the join token

    # --- torch's membership critical section ------------------------------------------------
    def compare_set(self, key: str, expected: Any, desired: Any) -> bytes:
        exp, des = as_bytes(expected).decode(), as_bytes(desired).decode()
        if key.endswith(tk.TOKEN_NAME) and exp == "" and des.startswith(tk.TOKEN_PREFIX):
            prefix = key[: -len(tk.TOKEN_NAME)]
            self._wait_stale_holder(key, des)
            self.inner.delete_key(prefix + des)
            result = as_bytes(self.inner.compare_set(key, expected, desired))
            if result.decode() == des:
                with self._lock:
                    self.holding = des
                    self._addrs = None
            return result
        return as_bytes(self.inner.compare_set(key, expected, desired))

    def _wait_stale_holder(self, key: str, token: str) -> None:
        # Our token value is already there: an earlier incarnation of this name died holding
        # it. Only the cleaner may release it; polling is bounded by the store timeout.
        deadline = time.monotonic() + self._timeout.total_seconds()
        while self.inner.check([key]) and as_bytes(self.inner.get(key)).decode() == token:
            if time.monotonic() > deadline:
                raise TokenSelfWait(
                    f"the membership token is still held by a crashed earlier incarnation of "
                    f"{self.name!r} ({token}); the sidecar's cleaner did not take it over "
                    f"within {self._timeout.total_seconds():.0f}s — is the rpcjob sidecar up?"
                )
            time.sleep(_STALE_HOLDER_POLL_S)

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        held = self.holding
        if held is not None and any(k.endswith(held) for k in keys):
            raise TokenSelfWait(
                f"rpcjob: torch's join error path waits for the membership token {held} that "
                "this process holds; failing the join now instead of after the store timeout"
            )
        if timeout is None:
            self.inner.wait(keys)
        else:
            self.inner.wait(keys, timeout)

    def set(self, key: str, value: Any) -> None:
        self.inner.set(key, value)
        if self.holding is None:
            return
        if key.endswith(tk.TOKEN_NAME) and as_bytes(value).decode() == "":
            with self._lock:
                self.holding = None
                self._addrs = None

    # --- plain delegation ---------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        held = self.holding
        if held is not None and held.endswith("_join") and ADDRS in key:
            cached = self._addr_snapshot(key).get(key)
            if cached is not None:
                return cached
        return as_bytes(self.inner.get(key))

    def _addr_snapshot(self, key: str) -> dict[str, bytes]:
        snap = self._addrs
        if snap is None:
            client, prefix = (
                getattr(self.inner, "client", None),
                getattr(self.inner, "prefix", None),
            )
            if client is None or prefix is None:
                return {}  # not an EtcdStore (e.g. a TCPStore in tests): no snapshot
            folder = key[: key.index(ADDRS) + len(ADDRS)]
            snap = {
                kv.key.decode()[len(prefix) :]: bytes(kv.value)
                for kv in client.get_prefix(prefix + folder)
            }
            with self._lock:
                if self.holding is not None:
                    self._addrs = snap
        return snap

    def add(self, key: str, value: int) -> int:
        return int(self.inner.add(key, value))

    def check(self, keys: list[str]) -> bool:
        return bool(self.inner.check(keys))

    def delete_key(self, key: str) -> bool:
        return bool(self.inner.delete_key(key))

    def num_keys(self) -> int:
        return int(self.inner.num_keys())

    def set_timeout(self, timeout: timedelta) -> None:
        self._timeout = timeout
        self.inner.set_timeout(timeout)

    @property
    def timeout(self) -> timedelta:
        return self._timeout
