"""``EtcdStore``: a ``torch.distributed.Store`` on etcd's v3 API with exact c10d semantics.

Torch's own etcd store speaks the v2 API (removed in etcd 3.6) and cannot ``compare_set``, so
dynamic RPC cannot run on it (docs/architecture.md#etcd-client). Semantics are pinned to
HashStore/TCPStore by one contract suite (tests/store_contract.py); notable points:

* ``get``/``wait``/``multi_get`` block until the keys exist or the store timeout passes, then
  raise ``DistStoreError`` ("wait timeout after …ms, keys: …", like TCPStore); they read, then
  watch, without polling (:mod:`rpcjob._store_wait`).
* ``compare_set``: a missing key and an empty value are equal for ``expected == ""`` (nested
  txn, one round trip); a missing key with a non-empty ``expected`` returns ``expected``.
* ``add``/``append`` are optimistic CAS txns on ``mod_revision``; the last value this process
  saw is cached so an uncontended call is one round trip. Values are decimal strings.
* A timeout of 0 means "no timeout" (c10d's ``kNoTimeout``).
* ``set_timeout``/``timeout`` are torch's own (C++ base): ``PrefixStore`` and ``rpc.init_rpc``
  set it there. Every etcd call gets the store timeout as its budget (failover included).
* etcd failures surface as torch's ``DistNetworkError``/``DistStoreError`` that are also the
  matching ``rpcjob.etcd`` error. A write cut off mid-call is never re-sent blindly:
  ``set``/``multi_set``/``delete_key`` read the keys back and re-send only conditionally on
  the keys being unchanged since (see :mod:`rpcjob._store_writes`); ``add``, ``append`` and
  ``compare_set`` raise: their outcome is unknown and the error says so.

Called from torch's C++ RPC threads through the pybind trampoline: the etcd client is
thread-safe and blocks with the GIL released (grpc waits in C, ``Event.wait`` too). Keep a
Python reference to any store handed to torch (see :func:`keep_alive`): torch holds only the
C++ half.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Unpack

import torch.distributed as dist

from rpcjob import _store_writes as writes
from rpcjob._store_wait import wait_for_keys
from rpcjob._store_writes import MAX_TXN_OPS
from rpcjob.etcd import (
    Client,
    ClientSettings,
    Compare,
    EtcdAuthError,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdTimeout,
    EtcdTLSError,
    EtcdUnavailable,
    Op,
    prefix_end,
)

NO_TIMEOUT_S = 10 * 365 * 24 * 3600.0  # c10d's kNoTimeout (0) as an etcd call budget
_CACHE_MAX = 4096
_STORES: list[Any] = []  # stores handed to torch (incl. clones): alive for the process

_d: Any = dist
DistStoreError: type[Exception] = _d.DistStoreError
DistNetworkError: type[Exception] = _d.DistNetworkError


def keep_alive(store: Any) -> Any:
    """Keep ``store`` alive for the process lifetime (torch drops the Python half of a Python
    store it holds; its next call would then die with an INTERNAL ASSERT)."""
    _STORES.append(store)  # atomic: no lock needed
    return store


# Store errors are torch's and rpcjob.etcd's at once, so both ``except`` styles catch them.
class StoreUnavailable(DistNetworkError, EtcdUnavailable):  # type: ignore[misc,valid-type]
    pass


class StoreTLSError(DistNetworkError, EtcdTLSError):  # type: ignore[misc,valid-type]
    pass


class StoreTimeout(DistNetworkError, EtcdTimeout):  # type: ignore[misc,valid-type]
    """The etcd call ran out of time; for add/append/compare_set the outcome is unknown."""


class StoreOutcomeUnknown(StoreTimeout, EtcdOutcomeUnknown):
    """A write cut off after it may have reached etcd that the store could not settle."""


class StoreAuthError(DistStoreError, EtcdAuthError):  # type: ignore[misc,valid-type]
    pass


class StoreEtcdError(DistStoreError, EtcdError):  # type: ignore[misc,valid-type]
    pass


_TRANSLATE: tuple[tuple[type[EtcdError], type[Exception]], ...] = (
    (EtcdTLSError, StoreTLSError),
    (EtcdOutcomeUnknown, StoreOutcomeUnknown),
    (EtcdUnavailable, StoreUnavailable),
    (EtcdTimeout, StoreTimeout),
    (EtcdAuthError, StoreAuthError),
    (EtcdError, StoreEtcdError),
)


def as_bytes(v: Any) -> bytes:
    """A key or value torch hands over (``str``, ``bytes`` or a buffer) as ``bytes``."""
    if type(v) is bytes:
        return v
    if isinstance(v, str):
        return v.encode()
    return bytes(v)


def _seconds(t: timedelta | float | int | None) -> float:
    if t is None:
        return 0.0
    return t.total_seconds() if isinstance(t, timedelta) else float(t)


class EtcdStore(dist.Store):  # type: ignore[misc,name-defined]
    """A c10d Store whose keys live in etcd under ``prefix`` (e.g. ``JobKeys(...).store``).

    ``endpoints`` and the TLS/auth ``settings`` as for :class:`rpcjob.etcd.Client`, or an
    existing ``client`` (shared, not closed by the store). ``timeout``: the store timeout
    (``get``/``wait`` and every etcd call; 0 = none); torch resets it via ``set_timeout``.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        *,
        prefix: str | bytes = "",
        timeout: timedelta | float = timedelta(seconds=300),
        client: Client | None = None,
        **settings: Unpack[ClientSettings],
    ) -> None:
        super().__init__()
        seconds = _seconds(timeout)
        if seconds < 0:
            raise ValueError(f"EtcdStore timeout must be >= 0 seconds (0 = none), got {seconds}")
        self._owns_client = client is None
        if client is None:
            if not endpoints:
                raise ValueError(
                    "EtcdStore needs etcd endpoints (host:port, comma-separated) or a client"
                )
            client = Client(endpoints, timeout=seconds or NO_TIMEOUT_S, **settings)
        self._client = client
        self._prefix = as_bytes(prefix)
        self._cache: dict[bytes, tuple[bytes, int]] = {}  # key -> (value, mod_revision) seen
        self.set_timeout(timedelta(seconds=seconds))

    # --- plumbing -----------------------------------------------------------------------------
    @property
    def client(self) -> Client:
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix.decode(errors="replace")

    def _k(self, key: str | bytes) -> bytes:
        return self._prefix + (key.encode() if type(key) is str else as_bytes(key))

    def _budget(self) -> float:
        return self.timeout.total_seconds() or NO_TIMEOUT_S

    @contextmanager
    def _etcd(self, op: str, key: Any) -> Iterator[None]:
        """Raise the block's etcd failures as the store's errors, naming the call."""
        try:
            yield
        except EtcdError as e:
            store_cls = next(s for c, s in _TRANSLATE if isinstance(e, c))
            raise store_cls(f"EtcdStore.{op}({key!r}) under prefix {self.prefix!r}: {e}") from e

    def close(self) -> None:
        """Close the etcd client if this store created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- c10d API -----------------------------------------------------------------------------
    def set(self, key: str, value: Any) -> None:
        with self._etcd("set", key):
            writes.write(self._client, [(self._k(key), as_bytes(value))], self._budget())

    def get(self, key: str) -> bytes:
        k = self._k(key)
        seconds = self.timeout.total_seconds()
        deadline: float | None = None  # set at the first miss
        while True:  # the key may be deleted again between the wake-up and the read
            with self._etcd("get", key):
                kv = self._client.get(k, timeout=self._budget())
            if kv is not None:
                return kv.value
            if deadline is None:
                deadline = time.monotonic() + (seconds or NO_TIMEOUT_S)
            self._wait([k], deadline, seconds, [key])

    def add(self, key: str, value: int) -> int:
        inc = int(value)

        def bump(cur: bytes) -> bytes:
            try:
                return str(int(cur) + inc).encode()
            except ValueError:
                raise ValueError(
                    f"EtcdStore.add({key!r}): the current value {cur[:64]!r} is not an integer; "
                    "add() only works on keys written by add() or set to a decimal number"
                ) from None

        return int(self._cas("add", key, b"0", bump))

    def append(self, key: str, value: Any) -> None:
        tail = as_bytes(value)
        self._cas("append", key, b"", lambda cur: cur + tail)

    def compare_set(self, key: str, expected: Any, desired: Any) -> bytes:
        k, exp, des = self._k(key), as_bytes(expected), as_bytes(desired)
        put, get = [Op.put(k, des)], [Op.get(k)]
        if exp:
            r = self._txn("compare_set", key, [Compare.value(k, "=", exp)], put, get)
            if r.succeeded:
                return des
            kvs = r.responses[0].kvs
            return kvs[0].value if kvs else exp  # missing key: c10d returns expected
        # expected "": a missing key and an empty value both match (value compares on a
        # missing key always fail in etcd, hence the nested txn).
        inner = Op.txn([Compare.value(k, "=", b"")], put, get)
        r = self._txn("compare_set", key, [Compare.version(k, "=", 0)], put, [inner])
        if r.succeeded:
            return des
        nested = r.responses[0]
        return des if nested.succeeded else nested.responses[0].kvs[0].value

    def check(self, keys: list[str]) -> bool:
        with self._etcd("check", keys):
            return all(
                self._client.range(self._k(key), count_only=True, timeout=self._budget()).count
                for key in keys
            )

    def wait(self, keys: list[str], timeout: timedelta | float | None = None) -> None:
        if not keys:
            return
        seconds = self.timeout.total_seconds() if timeout is None else _seconds(timeout)
        self._wait([self._k(k) for k in keys], time.monotonic() + (seconds or NO_TIMEOUT_S),
                   seconds, keys)  # fmt: skip

    def delete_key(self, key: str) -> bool:
        k = self._k(key)
        self._cache.pop(k, None)
        with self._etcd("delete_key", key):
            return writes.write(self._client, [(k, None)], self._budget())

    def num_keys(self) -> int:
        with self._etcd("num_keys", ""):  # no prefix: every key, from "\0" (etcd needs a key)
            return self._client.range(self._prefix or b"\0", range_end=prefix_end(self._prefix),
                                      count_only=True, timeout=self._budget()).count  # fmt: skip

    def multi_get(self, keys: list[str]) -> list[bytes]:
        ks = [self._k(k) for k in keys]
        seconds = self.timeout.total_seconds()
        deadline = time.monotonic() + (seconds or NO_TIMEOUT_S)
        while True:
            with self._etcd("multi_get", keys):
                kvs = writes.read(self._client, ks, self._budget())
            missing = [k for k, kv in zip(ks, kvs, strict=True) if kv is None]
            if not missing:
                return [kv.value for kv in kvs if kv]
            self._wait(missing, deadline, seconds, [m[len(self._prefix) :] for m in missing])

    def multi_set(self, keys: list[str], values: list[Any]) -> None:
        if len(keys) != len(values):
            raise DistStoreError(
                f"multiSet keys and values vectors must be of same size (EtcdStore.multi_set got "
                f"{len(keys)} keys and {len(values)} values)"
            )
        pairs = [(self._k(k), as_bytes(v)) for k, v in zip(keys, values, strict=True)]
        for i in range(0, len(pairs), MAX_TXN_OPS):  # atomic per chunk of etcd's txn op limit
            with self._etcd("multi_set", keys):
                writes.write(self._client, pairs[i : i + MAX_TXN_OPS], self._budget())

    def has_extended_api(self) -> bool:
        return True

    def clone(self) -> EtcdStore:
        """A store on the same etcd client and prefix (kept alive: torch holds the C++ half)."""
        twin = EtcdStore(client=self._client, prefix=self._prefix, timeout=self.timeout)
        return keep_alive(twin)  # type: ignore[no-any-return]

    # The pybind trampoline looks these two up by their C++ names.
    deleteKey = delete_key
    getNumKeys = num_keys

    # --- helpers ------------------------------------------------------------------------------
    def _txn(self, op: str, key: Any, compare: list[Compare], *branches: list[Op]) -> Any:
        with self._etcd(op, key):
            return self._client.txn(compare, *branches, timeout=self._budget())

    def _cas(self, op: str, key: str, missing: bytes, update: Callable[[bytes], bytes]) -> bytes:
        """Read-modify-write as an optimistic txn on mod_revision, starting from the value this
        process last saw (``missing`` for a missing key); the new value."""
        k = self._k(key)
        cur, rev = self._cache.get(k, (missing, 0))
        while True:
            new = update(cur)
            r = self._txn(
                op, key, [Compare.mod_revision(k, "=", rev)], [Op.put(k, new)], [Op.get(k)]
            )
            if r.succeeded:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[k] = (new, r.revision)
                return new
            kvs = r.responses[0].kvs
            cur, rev = (kvs[0].value, kvs[0].mod_revision) if kvs else (missing, 0)

    def _wait(self, ks: list[bytes], deadline: float, seconds: float, keys: Sequence[Any]) -> None:
        with self._etcd("wait", list(keys)):
            if wait_for_keys(self._client, ks, deadline):
                return
        names = ", ".join(k.decode(errors="replace") if isinstance(k, bytes) else k for k in keys)
        raise DistStoreError(
            f"wait timeout after {round(seconds * 1000)}ms, keys: {names} (EtcdStore on etcd "
            f"{','.join(self._client.endpoints)}, prefix {self.prefix!r})"
        )
