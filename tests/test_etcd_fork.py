"""Fork safety: a forked child never uses the parent's gRPC channel; it builds its own."""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid

from etcd_waits import Collector

from rpcjob.etcd import Client


def _child(c: Client, key: str, conn: mp.connection.Connection) -> None:
    try:
        c.put(key + "/child", str(os.getpid()))
        kv = c.get(key + "/parent")
        got = Collector()
        w = c.watch(key + "/in-child", callback=got)
        assert w.created.wait(10)
        c.put(key + "/in-child", "x")
        got.wait_for(1)
        conn.send(("ok", kv.value if kv else None))
    except BaseException as e:  # report anything to the parent
        conn.send(("error", repr(e)))
    finally:
        conn.close()


def test_forked_child_uses_inherited_client(etcd_endpoint: str) -> None:
    key = f"/fork/{uuid.uuid4().hex}"
    ctx = mp.get_context("fork")
    with Client(etcd_endpoint) as c:
        c.put(key + "/parent", "p")
        parent_events = Collector()
        assert c.watch(key + "/child", callback=parent_events).created.wait(10)
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(c, key, send))
        proc.start()
        send.close()
        assert recv.poll(60), "the forked child did not answer"
        assert recv.recv() == ("ok", b"p")
        proc.join(30)
        assert proc.exitcode == 0
        # The parent's client, watch stream included, is untouched by the child.
        assert parent_events.wait_for(1)[0].kv.value == str(proc.pid).encode()
        c.put(key + "/parent", "again")
        kv = c.get(key + "/parent")
        assert kv is not None and kv.value == b"again"
