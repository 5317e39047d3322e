"""Pure decisions of rpcjob.etcd: failure classification, retry decisions, endpoint parsing,
stub freshness. Table-driven; no etcd needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from rpcjob.etcd import (
    Compare,
    EtcdAuthError,
    EtcdOutcomeUnknown,
    EtcdTimeout,
    EtcdTLSError,
    EtcdUnavailable,
    Op,
    SettingNames,
)
from rpcjob.etcd._conn import parse_endpoints
from rpcjob.etcd._convert import prefix_end
from rpcjob.etcd._failures import Action, Failure, classify, decide, error_for, outcome_unknown
from rpcjob.etcd.values import describe_keys, read_only, written_keys
from rpcjob.etcd_env import ENV_NAMES, client_settings

C = grpc.StatusCode
REFUSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused"  # noqa: E501


# Each Failure and the gRPC errors (code, details, whether a user is configured) that mean it.
CLASSIFY = {
    Failure.CONNECT: [
        (C.UNAVAILABLE, REFUSED, False),
        (C.UNAVAILABLE, "failed to connect to all addresses; last error: x: Socket closed", False),
        (C.UNKNOWN, "ipv4:x: connection attempt timed out before receiving SETTINGS frame", False),
    ],
    Failure.BROKEN: [
        (C.UNAVAILABLE, "Socket closed", False),
        (C.UNAVAILABLE, "Connection reset by peer", False),
        (C.UNAVAILABLE, "etcdserver: request timed out", False),
    ],
    Failure.REAUTH: [
        (C.UNKNOWN, "etcdserver: invalid auth token", True),
        (C.UNAUTHENTICATED, "etcdserver: invalid auth token", True),
        (C.INVALID_ARGUMENT, "etcdserver: revision of auth store is old", True),
        (C.INVALID_ARGUMENT, "etcdserver: user name is empty", True),
    ],
    Failure.TLS: [
        (C.UNAVAILABLE, "ipv4:127.0.0.1:1: Handshake read failed (Socket closed)", False),
        (C.UNAVAILABLE, "ipv4:x: Unwrap failed (TSI_DATA_CORRUPTED)", False),
    ],
    Failure.AUTH_REQUIRED: [(C.INVALID_ARGUMENT, "etcdserver: user name is empty", False)],
    Failure.AUTH_FAILED: [
        (C.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password", True)
    ],
    Failure.AUTH_DISABLED: [
        (C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled", True)
    ],
    Failure.PERMISSION: [(C.PERMISSION_DENIED, "etcdserver: permission denied", True)],
    Failure.COMPACTED: [
        (C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", False)
    ],
    Failure.LEASE_NOT_FOUND: [(C.NOT_FOUND, "etcdserver: requested lease not found", False)],
    Failure.DEADLINE: [(C.DEADLINE_EXCEEDED, "Deadline Exceeded", False)],
    Failure.CANCELLED: [(C.CANCELLED, "Channel closed!", False)],
    Failure.OTHER: [(C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request", False)],
}


@pytest.mark.parametrize(
    ("code", "details", "have_user", "expected"),
    [(*error, failure) for failure, errors in CLASSIFY.items() for error in errors],
)
def test_classify(code: grpc.StatusCode, details: str, have_user: bool, expected: Failure) -> None:
    assert classify(code, details, have_user=have_user) is expected


@pytest.mark.parametrize(
    ("failure", "repeatable", "reauthed", "expected"),
    [
        (Failure.CONNECT, False, False, Action.RETRY),  # never sent: even a txn may go again
        (Failure.TLS, False, False, Action.RETRY),
        (Failure.BROKEN, True, False, Action.RETRY),
        (Failure.BROKEN, False, False, Action.UNKNOWN),  # a write that may have applied
        (Failure.DEADLINE, False, False, Action.UNKNOWN),
        (Failure.DEADLINE, True, False, Action.RAISE),
        (Failure.REAUTH, False, False, Action.REAUTH),  # rejected before applying: safe
        (Failure.REAUTH, True, True, Action.RAISE),  # once only
        (Failure.AUTH_DISABLED, True, False, Action.DROP_AUTH),
        (Failure.AUTH_FAILED, True, False, Action.RAISE),
        (Failure.PERMISSION, True, False, Action.RAISE),
        (Failure.OTHER, True, False, Action.RAISE),
    ],
)
def test_decide(failure: Failure, repeatable: bool, reauthed: bool, expected: Action) -> None:
    got = decide(failure, repeatable=repeatable, reauthed=reauthed)
    assert got is expected


def _err(f: Failure, details: str = "x", user: str | None = None) -> Exception:
    return error_for(
        f, details, endpoint="10.0.0.1:2379", endpoints=["10.0.0.1:2379"], op="get", timeout=5,
        user=user, names=ENV_NAMES,
    )  # fmt: skip


def test_error_messages_name_endpoint_and_fix() -> None:
    e = _err(Failure.CONNECT, REFUSED)
    assert isinstance(e, EtcdUnavailable)
    assert "etcd at 10.0.0.1:2379 unreachable" in str(e)
    assert "RPCJOB_ETCD_ENDPOINTS" in str(e)
    assert "failed to connect to all addresses" not in str(e)  # noise stripped
    e = _err(Failure.TLS, "Handshake read failed")
    assert isinstance(e, EtcdTLSError)
    assert "TLS handshake with etcd at 10.0.0.1:2379 failed" in str(e)
    assert "RPCJOB_ETCD_CA" in str(e)
    e = _err(Failure.AUTH_FAILED, user="bob")
    assert isinstance(e, EtcdAuthError)
    assert str(e).startswith("authentication failed for user 'bob'")
    assert "wrong password (RPCJOB_ETCD_PASSWORD)" in str(e)
    e = _err(Failure.AUTH_REQUIRED)
    assert "requires authentication: set RPCJOB_ETCD_USER and RPCJOB_ETCD_PASSWORD" in str(e)
    e = outcome_unknown(
        "Socket closed", op="put", keys="key '/t'", endpoint="10.0.0.1:2379", timeout=5,
        deadline=False,
    )  # fmt: skip
    assert isinstance(e, EtcdOutcomeUnknown) and isinstance(e, EtcdTimeout)
    assert (e.op, e.keys) == ("put", "key '/t'")
    assert str(e).startswith("put of key '/t' on etcd at 10.0.0.1:2379 lost its connection")
    assert "outcome is unknown" in str(e) and "not sent again" in str(e)


def test_several_endpoints_named_when_all_fail() -> None:
    e = error_for(
        Failure.CONNECT, REFUSED, endpoint="b:2", endpoints=["a:1", "b:2"], op="put", timeout=1,
        user=None, names=SettingNames(),
    )  # fmt: skip
    assert "that endpoints= lists reachable host:port endpoints" in str(e)  # the argument
    assert "etcd unreachable at every endpoint (a:1, b:2; last b:2)" in str(e)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:2379", ["127.0.0.1:2379"]),
        ("a:1, b:2,", ["a:1", "b:2"]),
        (["http://a:1/", "https://b:2"], ["a:1", "b:2"]),
        ("[::1]:2379", ["[::1]:2379"]),
    ],
)
def test_parse_endpoints(given: str | list[str], expected: list[str]) -> None:
    assert parse_endpoints(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "no etcd endpoint given"),
        ("localhost", "etcd endpoint 'localhost' is invalid \\(endpoints=\\): use host:port"),
        ("a:b", "etcd endpoint 'a:b' is invalid"),
    ],
)
def test_parse_endpoints_rejects(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoints(given)


def test_compare_rejects_bad_op() -> None:
    with pytest.raises(ValueError, match="compare op '==' is invalid: use one of"):
        Compare.value("k", "==", "v")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefix", "end"), [(b"a", b"b"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"", b"\0")]
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


def test_generated_stubs_are_up_to_date() -> None:
    """Regenerate every proto set into a temp dir and compare with the committed stubs."""
    script = Path(__file__).parents[1] / "sidecar/rpcjob/etcd/proto/generate.py"
    r = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("ops", "reads_only", "writes"),
    [
        ([Op.get("a"), Op.get("b", prefix=True)], True, []),
        ([Op.get("a"), Op.put("b", "1")], False, [b"b"]),
        ([Op.txn([], [Op.get("a")], [Op.get("b")])], True, []),
        ([Op.txn([], [Op.delete("a")], [Op.put("b", "")]), Op.put("a", "x")], False, [b"a", b"b"]),
    ],
)
def test_txn_is_repeatable_only_when_it_only_reads(
    ops: list[Op], reads_only: bool, writes: list[bytes]
) -> None:
    assert read_only(ops) is reads_only
    assert written_keys(ops) == writes


def test_describe_keys() -> None:
    assert describe_keys([b"/a"]) == "key '/a'"
    assert describe_keys([b"a", b"b", b"c", b"d", b"e"]) == "keys 'a', 'b', 'c' and 2 more"


def test_the_client_reads_no_environment_and_imports_no_pod_contract() -> None:
    import ast

    pkg = Path(__file__).parents[1] / "sidecar" / "rpcjob" / "etcd"
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            assert not [n for n in names if n.startswith("rpcjob.contract")], path
        assert "os.environ" not in path.read_text(), path


def test_client_settings_from_the_pod_environment() -> None:
    env = {"RPCJOB_ETCD_CA": "/ca.pem", "RPCJOB_ETCD_USER": "u", "RPCJOB_ETCD_PASSWORD": "p",
           "RPCJOB_ETCD_CERT": ""}  # fmt: skip
    assert client_settings(env) == {
        "ca": "/ca.pem", "cert": None, "key": None, "user": "u", "password": "p",
        "names": ENV_NAMES,
    }  # fmt: skip
    assert ENV_NAMES.endpoints == "RPCJOB_ETCD_ENDPOINTS"
