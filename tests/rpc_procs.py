"""Worker processes for the etcd3:// dynamic RPC tests: each joins torch's dynamic RPC group
(``world_size=None``) through ``init_method="etcd3://…"`` and then obeys commands from the test
over a queue. Forked from the torch-preloaded server of tests/forked.py, which has imported
torch and nothing else (never fork a process that uses gRPC)."""

from __future__ import annotations

import os
import queue
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from forked import CTX, die_with_parent


def echo(caller: str) -> str:
    import torch.distributed.rpc as rpc

    return f"{rpc.get_worker_info().name}<-{caller}"


def worker_main(name: str, rank: int, url: str, env: dict[str, str], cmds: Any, out: Any) -> None:
    die_with_parent()
    os.environ.update(env)
    try:
        import torch.distributed.rpc as rpc

        import rpcjob  # noqa: F401  (registers etcd3://)

        opts = rpc.TensorPipeRpcBackendOptions(
            init_method=url, rpc_timeout=60, num_worker_threads=4
        )
        rpc.init_rpc(name, rank=rank, world_size=None, rpc_backend_options=opts)
        out.put((name, "joined", None))
        while True:
            cmd, arg = cmds.get()
            if cmd == "call":
                out.put((name, "called", {p: rpc.rpc_sync(p, echo, args=(name,)) for p in arg}))
            elif cmd == "infos":
                agent = rpc.api._get_current_rpc_agent()
                out.put((name, "infos", sorted(w.name for w in agent.get_worker_infos())))
            elif cmd == "leave":
                rpc.shutdown()
                out.put((name, "left", None))
                return
    except BaseException:
        out.put((name, "error", traceback.format_exc()))


@dataclass
class Group:
    """The test's side: start workers, send commands, wait for their answers (deadlines)."""

    url: str
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Any] = field(default_factory=dict)
    cmds: dict[str, Any] = field(default_factory=dict)
    out: Any = field(default_factory=CTX.Queue)
    inbox: list[tuple[str, str, Any]] = field(default_factory=list)

    def start(self, name: str, rank: int) -> None:
        q = CTX.Queue()
        p = CTX.Process(
            target=worker_main, args=(name, rank, self.url, self.env, q, self.out), daemon=True
        )
        p.start()
        self.procs[name], self.cmds[name] = p, q

    def expect(self, names: list[str], what: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until every name reported ``what``; any worker error fails at once."""
        deadline = time.monotonic() + timeout
        got: dict[str, Any] = {}
        while len(got) < len(names):
            for item in list(self.inbox):
                n, kind, payload = item
                if kind == "error":
                    raise AssertionError(f"worker {n} failed:\n{payload}")
                if n in names and kind == what:
                    got[n] = payload
                    self.inbox.remove(item)
            if len(got) == len(names):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what} from {set(names) - set(got)}")
            try:
                self.inbox.append(self.out.get(timeout=min(remaining, 1.0)))
            except queue.Empty:
                dead = [n for n in names if n not in got and not self.procs[n].is_alive()]
                if dead and self.out.empty():
                    raise AssertionError(
                        f"workers {dead} exited without reporting {what}"
                    ) from None
        return got

    def send(self, names: list[str], cmd: str, arg: Any = None) -> None:
        for n in names:
            self.cmds[n].put((cmd, arg))

    def close(self) -> None:
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
            p.join(10)
