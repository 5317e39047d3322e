"""The watch stream of rpcjob.etcd.Client against a real etcd: history, prefixes, cancel,
compaction, and resume after an etcd restart without lost or duplicate events."""

from __future__ import annotations

import threading
import uuid

import grpc
from etcd_waits import Collector

from rpcjob.etcd import Client, EtcdCompacted
from rpcjob.etcd._pb import rpc_pb2, rpc_pb2_grpc
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd


def _p() -> str:
    return f"/w/{uuid.uuid4().hex}/"


def test_watch_key_prefix_and_prev_kv(etcd_endpoint: str) -> None:
    p = _p()
    with Client(etcd_endpoint) as c:
        one, pre = Collector(), Collector()
        w1 = c.watch(p + "a", callback=one, prev_kv=True)
        w2 = c.watch(p, prefix=True, callback=pre)
        assert w1.created.wait(10) and w2.created.wait(10)
        c.put(p + "a", "1")
        c.put(p + "b", "2")
        c.put(p + "a", "3")
        c.delete(p + "a")
        ev = one.wait_for(3)
        assert [(e.type, e.kv.value) for e in ev] == [("PUT", b"1"), ("PUT", b"3"), ("DELETE", b"")]
        assert ev[0].prev_kv is None
        assert ev[1].prev_kv is not None and ev[1].prev_kv.value == b"1"
        assert ev[2].prev_kv is not None and ev[2].prev_kv.value == b"3"
        assert [e.kv.key for e in pre.wait_for(4)] == [
            (p + k).encode() for k in ("a", "b", "a", "a")
        ]
        w1.cancel()
        w2.cancel()
        assert w1.done.is_set() and w1.error is None


def test_watch_from_revision_replays_history(etcd_endpoint: str) -> None:
    p = _p()
    with Client(etcd_endpoint) as c:
        first = c.put(p + "k", "1").revision
        c.put(p + "k", "2")
        c.put(p + "k", "3")
        got = Collector()
        c.watch(p + "k", start_revision=first + 1, callback=got)
        assert [e.kv.value for e in got.wait_for(2)] == [b"2", b"3"]
        c.put(p + "k", "4")
        assert got.wait_for(3)[-1].kv.value == b"4"


def test_cancel_stops_callbacks_and_other_watches_continue(etcd_endpoint: str) -> None:
    p = _p()
    with Client(etcd_endpoint) as c:
        a, b = Collector(), Collector()
        wa = c.watch(p + "a", callback=a)
        wb = c.watch(p + "b", callback=b)
        # Both watches start at etcd's revision when it creates them: b's put must come after
        # b is created, or b rightly never sees it (seen once under load: b got nothing).
        assert wa.created.wait(30) and wb.created.wait(30)
        wa.cancel()
        c.put(p + "a", "x")
        c.put(p + "b", "y")
        b.wait_for(1)  # b's event came after a's in revision order on the same stream
        assert a.events == []


def test_watch_of_compacted_revision_reports_etcd_compacted(etcd_endpoint: str) -> None:
    p = _p()
    errors: list[BaseException] = []
    failed = threading.Event()
    with Client(etcd_endpoint) as c:
        old = c.put(p + "k", "1").revision
        now = c.put(p + "k", "2").revision
        req = rpc_pb2.CompactionRequest(revision=now, physical=True)
        with grpc.insecure_channel(etcd_endpoint) as ch:  # the client wraps no Compact call
            rpc_pb2_grpc.KVStub(ch).Compact(req, timeout=30)
        w = c.watch(
            p + "k", start_revision=old, callback=Collector(),
            on_error=lambda e: (errors.append(e), failed.set()),
        )  # fmt: skip
        assert failed.wait(10)
        assert w.done.is_set()
        assert isinstance(errors[0], EtcdCompacted) and w.error is errors[0]
        assert errors[0].compact_revision == now
        assert f"revision {old} has been compacted" in str(errors[0])


def test_watch_resumes_after_etcd_restart_without_loss_or_duplicates(etcd: EmbeddedEtcd) -> None:
    p = "/resume/"
    got = Collector()
    with Client(etcd.endpoint, timeout=10) as c, Client(etcd.endpoint, timeout=10) as writer:
        w = c.watch(p, prefix=True, callback=got)
        assert w.created.wait(10)
        writer.put(p + "1", "1")
        got.wait_for(1)
        etcd.restart()  # same data dir: revisions continue
        # Written while the watcher is still reconnecting: it must replay them, once.
        for i in range(2, 6):
            writer.put(p + str(i), str(i))
        assert got.values()[:1] == [b"1"]
        got.wait_for(5, timeout=20)
        writer.put(p + "6", "6")
        got.wait_for(6, timeout=20)
        assert got.values() == [b"1", b"2", b"3", b"4", b"5", b"6"]
        revs = [e.kv.mod_revision for e in got.events]
        assert revs == sorted(set(revs))
        assert w.error is None
