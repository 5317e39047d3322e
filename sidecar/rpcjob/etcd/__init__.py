"""rpcjob.etcd: our own thin etcd v3 client over grpcio.

Why our own client: docs/architecture.md#etcd-client.

One thread-safe :class:`Client` over generated stubs (``proto/vendor/*.proto``, etcd's own
packages and field numbers; stubs in ``_pb/``). asyncio code calls it from a thread
(``asyncio.to_thread``).

    with Client("127.0.0.1:2379") as c:
        c.put("k", "v")
        c.get("k").value  # b"v"
        c.txn([Compare.version("k", "=", 0)], [Op.put("k", "x")], [Op.get("k")])

Keys/values accept ``str`` or ``bytes``; returned keys/values are ``bytes``. All errors are
:class:`EtcdError` subclasses whose messages name the endpoint(s) and the fix.
"""

from __future__ import annotations

from rpcjob.etcd._convert import prefix_end
from rpcjob.etcd.client import Client, ClientSettings, KeepAlive, Watch
from rpcjob.etcd.errors import (
    EtcdAuthError,
    EtcdCompacted,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdTimeout,
    EtcdTLSError,
    EtcdUnavailable,
    SettingNames,
)
from rpcjob.etcd.values import (
    KV,
    Compare,
    DeleteResult,
    Lease,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchEvent,
)

__all__ = [
    "KV",
    "Client",
    "ClientSettings",
    "Compare",
    "DeleteResult",
    "EtcdAuthError",
    "EtcdCompacted",
    "EtcdError",
    "EtcdOutcomeUnknown",
    "EtcdTLSError",
    "EtcdTimeout",
    "EtcdUnavailable",
    "KeepAlive",
    "Lease",
    "Op",
    "PutResult",
    "RangeResult",
    "SettingNames",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "prefix_end",
]
