"""The operator's etcd access: read a job's live members, delete a job's keys.

One :class:`rpcjob.etcd.Client` per distinct endpoint list (jobs usually share the chart's
etcd), with the operator's own TLS/auth settings from ``RPCJOB_ETCD_*`` (the chart mounts them;
the operator never reads the jobs' Secrets). The client is synchronous and thread-safe: each
call runs on a worker thread (``asyncio.to_thread``) so the event loop never blocks. A short
timeout: an unreachable etcd must not stall reconciles — the cycle then runs with
``members=None`` (joined falls back to pod readiness).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from rpcjob import contract
from rpcjob.etcd import Client, EtcdError
from rpcjob.etcd_env import client_settings
from rpcjob.records import MemberRecord, read_members

log = logging.getLogger("rpcjob_operator.members")
READ_TIMEOUT_S = 2.0


class EtcdPool:
    """etcd clients keyed by endpoint list, called from the event loop through threads."""

    def __init__(self, client_kwargs: dict[str, Any] | None = None) -> None:
        self._kwargs = dict(client_settings()) if client_kwargs is None else client_kwargs
        self._clients: dict[tuple[str, ...], Client] = {}

    def client(self, endpoints: Sequence[str]) -> Client:
        key = tuple(endpoints)
        if key not in self._clients:
            self._clients[key] = Client(list(key), timeout=READ_TIMEOUT_S, **self._kwargs)
        return self._clients[key]

    async def close(self) -> None:
        for c in self._clients.values():
            try:
                await asyncio.to_thread(c.close)
            except Exception:  # closing on shutdown: nothing left to do about it
                log.debug("closing an etcd client failed", exc_info=True)
        self._clients.clear()

    async def read_members(
        self, endpoints: Sequence[str], keys: contract.JobKeys
    ) -> tuple[MemberRecord, ...]:
        """The live member records (:func:`rpcjob.records.read_members`); raises EtcdError
        when etcd is unreachable."""
        client = self.client(endpoints)
        return await asyncio.to_thread(read_members, client, keys, READ_TIMEOUT_S)

    async def delete_prefix(self, endpoints: Sequence[str], prefix: str) -> int:
        """Delete every key under ``prefix``; the number deleted. Raises EtcdError."""
        client = self.client(endpoints)
        result = await asyncio.to_thread(client.delete, prefix, prefix=True, timeout=5.0)
        return int(result.deleted)


def job_endpoints(obj: dict[str, Any], default: Sequence[str]) -> tuple[str, ...]:
    """The job's etcd endpoints (spec.etcd.endpoints, else the operator default), read
    leniently so that deletion works even for a job whose spec no longer parses."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    etcd = (spec or {}).get("etcd")
    raw = etcd.get("endpoints") if isinstance(etcd, dict) else None
    if isinstance(raw, list) and raw and all(isinstance(e, str) and e for e in raw):
        return tuple(raw)
    return tuple(default)


__all__ = ["EtcdError", "EtcdPool", "job_endpoints"]
