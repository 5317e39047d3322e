"""Exceptions raised by :mod:`rpcjob.etcd`.

Every gRPC error is translated at the client boundary (``raise ... from``) into one of these,
with a message that names the endpoint(s) and the fix. Passwords never appear in messages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SettingNames:
    """How error messages name the client's settings, so that the fix they suggest points where
    the caller took each one from (by default the Client's own keyword arguments; a pod passes
    its environment variable names)."""

    endpoints: str = "endpoints="
    ca: str = "ca="
    cert: str = "cert="
    key: str = "key="
    user: str = "user="
    password: str = "password="


DEFAULT_NAMES = SettingNames()


class EtcdError(RuntimeError):
    """Base class for every error of the etcd client."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (connection refused, reset, no leader) within the timeout."""


class EtcdAuthError(EtcdError):
    """Authentication failed (wrong user/password) or the user lacks a permission."""


class EtcdTLSError(EtcdUnavailable):
    """The TLS handshake failed (wrong CA, missing/unknown client certificate, plain server)."""


class EtcdTimeout(EtcdError, TimeoutError):
    """The call did not finish within the timeout."""


class EtcdOutcomeUnknown(EtcdTimeout):
    """A write (put, delete, a txn that writes) timed out or lost its connection after
    it may have reached etcd: it was applied once or not at all, and it is never re-sent (a
    late copy could undo another client's later write). ``op`` and ``keys`` name the call; read
    the keys back, or retry with a txn conditional on the mod_revision last seen.
    """

    def __init__(self, message: str, *, op: str = "", keys: str = "") -> None:
        super().__init__(message)
        self.op = op
        self.keys = keys


class EtcdCompacted(EtcdError):
    """A watch asked for a revision that etcd has compacted away.

    ``compact_revision`` is the oldest revision still available; re-read the state and watch
    again from a revision >= it.
    """

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
