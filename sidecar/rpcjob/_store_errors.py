"""Error types of :mod:`rpcjob.store` and the registry that keeps stores handed to torch alive.

Each error is torch's ``DistNetworkError``/``DistStoreError`` *and* the matching
:mod:`rpcjob.etcd` error, so both ``except`` styles work (torch's RPC code catches
``RuntimeError``, which both are).
"""

from __future__ import annotations

import threading
from typing import Any

import torch.distributed as dist

from rpcjob.etcd import (
    EtcdAuthError,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdTimeout,
    EtcdTLSError,
    EtcdUnavailable,
)

_STORES: list[Any] = []  # stores handed to torch (incl. clones): alive for the process
_KEEP_LOCK = threading.Lock()

_d: Any = dist
DistStoreError: type[Exception] = _d.DistStoreError
DistNetworkError: type[Exception] = _d.DistNetworkError


def keep_alive(store: Any) -> Any:
    """Keep ``store`` alive for the process lifetime (torch drops the Python half of a Python
    store it holds; its next call would then die with an INTERNAL ASSERT)."""
    with _KEEP_LOCK:
        _STORES.append(store)
    return store


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


def translate(e: EtcdError, where: str) -> Exception:
    """The store error for etcd error ``e``, its message prefixed with ``where``."""
    store_cls = next(s for c, s in _TRANSLATE if isinstance(e, c))
    return store_cls(f"{where}: {e}")
