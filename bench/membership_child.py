"""The member processes of bench/membership_bench.py and the line protocol it speaks with them.

One small script serves both sides: ``plain``/``default`` joins torch's own dynamic group over a
TCPStore (the anchor; ``plain`` with the same TensorPipe options as rpcjob, ``default`` with
torch's defaults), ``rpcjob`` joins through ``rpcjob.init_rpc()`` and its pod's sidecar. Each
prints ``JOINED <name> <rank> <seconds>``, then answers ``members`` and ``leave`` on stdin.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from typing import Any

CHILD = r"""
import json, os, sys, time
import torch.distributed.rpc as rpc
mode, name, rank, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def out(*a):
    print(*a, flush=True)
if mode in ("plain", "default"):
    kw = dict(num_worker_threads=4, rpc_timeout=120) if mode == "plain" else {}
    opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}", **kw)
    t0 = time.monotonic()
    rpc.init_rpc(name, rank=rank, world_size=None, rpc_backend_options=opts)
    out("JOINED", name, rank, f"{time.monotonic() - t0:.4f}")
    leave = rpc.shutdown
else:
    import rpcjob
    import rpcjob.store, rpcjob.worker.api, rpcjob.worker.join, rpcjob.worker.guard_store
    import rpcjob.devices.agent  # imports are not join latency
    t0 = time.monotonic()
    ident = rpcjob.init_rpc()
    out("JOINED", ident.worker_name, ident.rank, f"{time.monotonic() - t0:.4f}",
        json.dumps(rpcjob.worker.api.join_timings))
    leave = rpcjob.shutdown
from rpcjob.devices import agent
for line in sys.stdin:
    cmd = line.split()
    if cmd and cmd[0] == "members":
        out("MEMBERS", json.dumps(agent.current_members()))
    elif cmd and cmd[0] == "leave":
        leave()
        out("LEFT")
        break
"""


CHILD_ARGV = [sys.executable, "-c", CHILD]
PIPES: dict[str, Any] = {
    "stdin": subprocess.PIPE,
    "stdout": subprocess.PIPE,
    "stderr": subprocess.STDOUT,
    "text": True,
}
BATCH = 4  # members started at a time while a group is built: 2 shared cores


def popen(argv: list[str]) -> subprocess.Popen[str]:
    """A child tied to this process (SIGKILL of the bench takes it down too)."""
    from rpcjob_operator.localexec import lifeline

    cmd, fds = lifeline.wrap(argv)
    return subprocess.Popen(cmd, pass_fds=fds, start_new_session=True, **PIPES)


class Child:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.p = proc
        self.q: queue.Queue[str] = queue.Queue()
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def plain(cls, name: str, rank: int, port: int) -> Child:
        return cls(popen([*CHILD_ARGV, "plain", name, str(rank), str(port)]))

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.tail = [*self.tail[-30:], line.rstrip()]
            self.q.put(line.rstrip())
        self.q.put("EOF")

    def expect(self, prefix: str, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
            if line == "EOF":
                break
        raise RuntimeError(f"no {prefix!r} from child; last output:\n" + "\n".join(self.tail))

    def ask(self, cmd: str, prefix: str) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.expect(prefix)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
