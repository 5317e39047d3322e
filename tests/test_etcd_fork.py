"""Fork safety: a forked child never uses the parent's gRPC channel; it builds its own.

The fork happens in a fresh interpreter (this file run as a script) whose only threads are the
client's own, as in a worker that forks DataLoader workers. Forking the pytest worker itself,
which earlier tests left with many gRPC, torch and etcd threads, once crashed CPython's own
after-fork handler (``threading._after_fork``, before any hook of ours ran): a hazard of forking
that process, not something the client can prevent.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
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


def scenario(endpoint: str) -> None:
    key = f"/fork/{uuid.uuid4().hex}"
    ctx = mp.get_context("fork")
    with Client(endpoint) as c:
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


def test_forked_child_uses_inherited_client(etcd_endpoint: str) -> None:
    res = subprocess.run(
        [sys.executable, __file__, etcd_endpoint], capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stdout + res.stderr


if __name__ == "__main__":
    scenario(sys.argv[1])
