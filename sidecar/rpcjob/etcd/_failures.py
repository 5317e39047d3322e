"""Pure decisions about gRPC failures: what kind of failure it is, whether a call may be
retried, and the person-readable error it becomes.

Kept free of I/O so that the table-driven tests can pin every case (tests/test_etcd_failures.py).
"""

from __future__ import annotations

import enum
import re

import grpc

from rpcjob.etcd import errors as er


class Failure(enum.Enum):
    CONNECT = "connect"  # never reached etcd: safe to retry anything on another endpoint
    # Handshake failed: mostly a configuration problem, but etcd also fails handshakes while it
    # starts (restart), so it is retried like CONNECT; the final error still says TLS.
    TLS = "tls"
    BROKEN = "broken"  # the call may have reached etcd: re-send repeatable (read) calls only
    DEADLINE = "deadline"  # our deadline passed: outcome unknown
    REAUTH = "reauth"  # etcd rejected the token: authenticate again, then retry
    AUTH_FAILED = "auth_failed"  # wrong user or password
    AUTH_REQUIRED = "auth_required"  # etcd has auth enabled, we have no user
    AUTH_DISABLED = "auth_disabled"  # we have a user, etcd has auth off: go on without token
    PERMISSION = "permission"
    COMPACTED = "compacted"
    LEASE_NOT_FOUND = "lease_not_found"
    CANCELLED = "cancelled"  # the client was closed
    OTHER = "other"  # etcd refused the request (bad argument, too many ops, ...)


_TLS_RE = re.compile(r"ssl|tls|handshake|certificate|x509|TSI_", re.IGNORECASE)
_CONNECT_RE = re.compile(
    r"failed to connect|connection refused|connect failed|dns resolution|no address|"
    r"name resolution|unreachable|failed to pick",
    re.IGNORECASE,
)


_SETTINGS = "before receiving SETTINGS frame"


def classify(code: grpc.StatusCode | None, details: str, *, have_user: bool) -> Failure:
    d = details or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) and _SETTINGS in d:
        return Failure.CONNECT  # etcd accepted TCP but is not serving yet (starting up)
    if code == grpc.StatusCode.UNAVAILABLE:
        if _TLS_RE.search(d):
            return Failure.TLS
        if _CONNECT_RE.search(d):
            return Failure.CONNECT
        return Failure.BROKEN
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Failure.DEADLINE
    if code == grpc.StatusCode.CANCELLED:
        return Failure.CANCELLED
    if "invalid auth token" in d or "revision of auth store is old" in d:
        return Failure.REAUTH
    if "user name is empty" in d:
        # etcd got no token although auth is on: ours was dropped (e.g. etcd restarted).
        return Failure.REAUTH if have_user else Failure.AUTH_REQUIRED
    if "authentication failed" in d:
        return Failure.AUTH_FAILED
    if "authentication is not enabled" in d:
        return Failure.AUTH_DISABLED
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in d:
        return Failure.PERMISSION
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Failure.REAUTH
    if "compacted" in d:
        return Failure.COMPACTED
    if "lease not found" in d:
        return Failure.LEASE_NOT_FOUND
    return Failure.OTHER


class Action(enum.Enum):
    REAUTH = "reauth"  # drop the token, authenticate again, send again
    DROP_AUTH = "drop_auth"  # etcd has auth disabled: send again without a token
    RETRY = "retry"  # next endpoint, backing off after each full round, until the deadline
    UNKNOWN = "unknown"  # a write that may have been applied: raise EtcdOutcomeUnknown
    RAISE = "raise"


def decide(f: Failure, *, repeatable: bool, reauthed: bool) -> Action:
    """What the retry loop does after failure ``f``.

    As etcd's Go client: a call that may have reached etcd is sent again only when it is
    repeatable (reads, lease and status calls); a write (put, delete, txn with a write,
    auth admin call) whose outcome is unknown is never re-sent, since a late copy could undo
    a later write of another client."""
    if f is Failure.REAUTH and not reauthed:
        return Action.REAUTH
    if f is Failure.AUTH_DISABLED:
        return Action.DROP_AUTH
    if not repeatable and f in (Failure.BROKEN, Failure.DEADLINE):
        return Action.UNKNOWN
    if f in (Failure.CONNECT, Failure.TLS) or (repeatable and f is Failure.BROKEN):
        return Action.RETRY  # CONNECT and TLS never reached etcd's API
    return Action.RAISE


def short(details: str) -> str:
    """gRPC's details without the 'failed to connect to all addresses; last error' noise."""
    d = (details or "").strip()
    d = re.sub(r"^failed to connect to all addresses; last error: ", "", d)
    return d[:300]


def error_for(
    f: Failure,
    details: str,
    *,
    endpoint: str,
    endpoints: list[str],
    op: str,
    timeout: float,
    user: str | None,
    names: er.SettingNames,
) -> er.EtcdError:
    """The exception a failure becomes, with a message naming the endpoint(s) and the fix."""
    d = short(details)
    n = names
    if f is Failure.TLS:
        return er.EtcdTLSError(
            f"TLS handshake with etcd at {endpoint} failed ({d}): check {n.ca} (the CA "
            f"that signed the server certificate), {n.cert}/{n.key} (the client "
            "certificate, when etcd runs with --client-cert-auth) and that the endpoint serves TLS"
        )
    if f in (Failure.CONNECT, Failure.BROKEN):
        where = (
            f"etcd at {endpoint} unreachable"
            if len(endpoints) == 1
            else f"etcd unreachable at every endpoint ({', '.join(endpoints)}; last {endpoint})"
        )
        hint = (
            f"; etcd closed the connection at once: if it serves TLS (https), set {n.ca}"
            if "socket closed" in d.lower()
            else ""
        )
        return er.EtcdUnavailable(
            f"{where}: {op} failed for {timeout:g}s ({d}): check that etcd runs and that "
            f"{n.endpoints} lists reachable host:port endpoints{hint}"
        )
    if f is Failure.DEADLINE:
        return er.EtcdTimeout(f"{op} on etcd at {endpoint} timed out after {timeout:g}s ({d})")
    if f is Failure.AUTH_FAILED:
        return er.EtcdAuthError(
            f"authentication failed for user {user!r} at etcd {endpoint}: wrong password "
            f"({n.password}) or unknown user ({n.user})"
        )
    if f is Failure.AUTH_REQUIRED:
        return er.EtcdAuthError(
            f"etcd at {endpoint} requires authentication: set {n.user} and {n.password}"
        )
    if f is Failure.PERMISSION:
        who = f"user {user!r}" if user else "this client"
        return er.EtcdAuthError(
            f"etcd at {endpoint} denied {op} to {who} ({d}): grant the user's role access to "
            "the key range (etcdctl role grant-permission)"
        )
    if f is Failure.REAUTH:
        return er.EtcdAuthError(
            f"etcd at {endpoint} rejected the auth token again right after re-authenticating "
            f"({d}) during {op}"
        )
    if f is Failure.COMPACTED:
        return er.EtcdCompacted(f"{op} on etcd at {endpoint}: {d}", 0)
    if f is Failure.CANCELLED:
        return er.EtcdError(f"{op} on etcd at {endpoint} was cancelled (client closed?) ({d})")
    return er.EtcdError(f"etcd at {endpoint} refused {op}: {d}")


def outcome_unknown(
    details: str, *, op: str, keys: str, endpoint: str, timeout: float, deadline: bool
) -> er.EtcdOutcomeUnknown:
    why = f"timed out after {timeout:g}s" if deadline else "lost its connection mid-call"
    return er.EtcdOutcomeUnknown(
        f"{op} of {keys} on etcd at {endpoint} {why} ({short(details)}); its outcome is unknown "
        "(etcd may have applied it), so it was not sent again: read the key and decide from "
        "what it holds, or write with a txn that compares the mod_revision you last saw",
        op=op,
        keys=keys,
    )
