"""Test kit (no tests here): a scriptable worker process and a line-protocol driver.

The child is a real torch RPC worker. It joins either through ``rpcjob.init_rpc()`` (mode
``rpcjob``, needs a sidecar) or through the worker's guard store over a TCPStore with a given
rank (mode ``tcp``, for store-level recovery without a sidecar), then obeys one command per
stdin line and answers one line per command on stdout. ``RPCJOB_TEST_HOOK`` names a fault the
child injects into itself (``die-in-critical-section``, ``fail-first-join``).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from forked import ForkedPopen

REPLY = "\x1e"  # ASCII record separator: marks the start of the child's replies

CHILD = r"""
import os, sys, time, datetime, json, traceback
mode = sys.argv[1]
import torch
import torch.distributed.rpc as rpc
from rpcjob.devices import agent

def out(*a):  # one write per reply, behind the marker: see Proc._read
    os.write(1, ("\x1e" + " ".join(map(str, a)) + "\n").encode())

def inject_fault(fault):  # faults the tests inject here: rpcjob itself has no test hooks
    if fault == "die-in-critical-section":  # SIGKILL right after torch registered our address
        import signal                       # while we hold our join token
        from rpcjob.worker.guard_store import GuardStore
        real_set = GuardStore.set
        def set_dying(self, key, value):
            real_set(self, key, value)
            if (self.holding or "").endswith("_join") and key.endswith("addrs/" + self.name):
                os.kill(os.getpid(), signal.SIGKILL)
        GuardStore.set = set_dying
    elif fault == "fail-first-join":  # the first join fails where a join racing a dead member
        from rpcjob.devices import agent  # does: the joiner's first contact with the members
        real = agent._guarded_set_devices_and_reverse_device_map
        fired = []
        def fail_once(a):
            if not fired:
                fired.append(1)
                raise RuntimeError("test fault fail-first-join: a member cannot be reached")
            return real(a)
        agent._guarded_set_devices_and_reverse_device_map = fail_once

inject_fault(os.environ.get("RPCJOB_TEST_HOOK", ""))

if mode == "tcp":
    import torch.distributed as dist
    from rpcjob.worker import join as J
    from rpcjob.worker.guard_store import GuardStore
    name, rank, port, timeout = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    inner = dist.TCPStore("127.0.0.1", port, is_master=False,
                          timeout=datetime.timedelta(seconds=timeout))
    while True:
        store = GuardStore(inner, name, rank)
        t0 = time.monotonic()
        try:
            J.join(J.JoinSpec(name, rank, timeout, 4), store)
            out("JOINED", name, rank, f"{time.monotonic() - t0:.3f}")
            break
        except Exception as e:  # its token and keys are left to the cleaner, as in a pod
            msg = repr(e)[:300].replace("\n", " ")
            out("JOINFAIL", f"{time.monotonic() - t0:.3f}", msg)
            rank = int(sys.stdin.readline().split()[1])  # "retry <rank>"
else:
    import rpcjob
    t0 = time.monotonic()
    try:
        ident = rpcjob.init_rpc(metrics_interval=float(os.environ.get("KIT_METRICS_S", "10")))
    except Exception as e:
        out("JOINFAIL", type(e).__name__, str(e).replace("\n", " "))
        sys.exit(3)
    name = ident.worker_name
    out("JOINED", name, ident.rank, f"{time.monotonic() - t0:.3f}")
    @rpcjob.on_drain
    def _drain():
        out("DRAINING", name)

for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    try:
        if cmd[0] == "members":
            out("MEMBERS", json.dumps(agent.current_members()))
        elif cmd[0] == "ping":
            bad = []
            for peer in cmd[1:]:
                try:
                    r = rpc.rpc_sync(peer, torch.add, args=(torch.ones(1), 1), timeout=20)
                    assert r.item() == 2.0
                except Exception as e:
                    bad.append(f"{peer}:{str(e)[:120]}")
            out("PING", json.dumps(bad))
        elif cmd[0] == "evict":
            agent.evict(cmd[1], int(cmd[2]))
            out("EVICTED", cmd[1])
        elif cmd[0] == "autograd":  # the worker id dist-autograd puts in this process's context ids
            import torch.distributed.autograd as dist_autograd
            with dist_autograd.context() as ctx:
                out("AUTOGRAD", ctx >> 48)
        elif cmd[0] == "metrics":
            out("METRICS", json.dumps(agent.metrics()))
        elif cmd[0] == "leave":
            if mode == "tcp":
                rpc.shutdown()
            else:
                rpcjob.shutdown()
            out("LEFT")
            break
        elif cmd[0] == "exit":
            break
    except Exception as e:
        out("ERR", repr(e)[:300].replace("\n", " "))
"""


def child_script() -> str:
    """The scriptable child worker's file (written once per test process)."""
    script = Path(os.environ.get("TMPDIR", "/tmp")) / f"rpcjob_kit_child_{os.getpid()}.py"
    if not script.exists() or script.read_text() != CHILD:
        script.write_text(CHILD)
    return str(script)


def child_argv(*args: str) -> list[str]:
    """argv of the scriptable child worker in a fresh interpreter."""
    return [sys.executable, child_script(), *args]


class Proc:
    """A child worker driven line by line."""

    def __init__(self, popen: subprocess.Popen[str], log: Path | None = None) -> None:
        self.p = popen
        self.log = log
        self.lines: queue.Queue[str] = queue.Queue()
        self.all: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def spawn(cls, args: list[str], env: Mapping[str, str] | None = None) -> Proc:
        """The child worker, forked from the torch-preloaded server (tests/forked.py)."""
        popen = ForkedPopen(child_script(), args, dict(os.environ if env is None else env))
        return cls(popen)  # Popen's calls that Proc makes

    def _read(self) -> None:
        # The child's stderr (torch's C++ log lines included) shares this pipe. A reply is
        # one write() that starts with REPLY, so a log line written at the same moment can
        # only come before it on the same line (seen: "MEMBERS[W1206 ...] ..."): the text
        # after the last marker is the reply.
        assert self.p.stdout is not None
        for line in self.p.stdout:
            line = line.rstrip("\n").rpartition(REPLY)[2]
            self.all.append(line)
            if self.log is not None:
                with self.log.open("a") as f:
                    f.write(line + "\n")
            self.lines.put(line)
        self.lines.put("EOF")

    def send(self, cmd: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def expect(self, *prefixes: str, timeout: float = 240.0) -> str:
        """The next protocol line starting with one of ``prefixes`` (log lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {prefixes} within {timeout}s; output:\n" + "\n".join(self.all[-40:])
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line.startswith(prefixes):
                return line
            if line == "EOF":
                raise AssertionError(
                    f"process exited ({self.p.wait()}) before {prefixes}; "
                    "output:\n" + "\n".join(self.all[-40:])
                )

    def ask(self, cmd: str, *prefixes: str, timeout: float = 120.0) -> str:
        self.send(cmd)
        return self.expect(*prefixes, "ERR", timeout=timeout)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.send("exit")
                self.p.wait(timeout=10)
            except Exception:
                self.p.kill()
                self.p.wait()
