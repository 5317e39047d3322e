"""Test-only workload (tests/test_observe_e2e.py, e2e/tests/test_observe.py): workers call
the server's slow remote function (``slow_remote``, 150 ms) and a fast one in a loop; the
server only serves."""

from __future__ import annotations

import os
import threading
import time

import torch
import torch.distributed.rpc as rpc

import rpcjob

SLOW_S = float(os.environ.get("OBSERVE_SLOW_S", "0.15"))


def slow_remote(x: torch.Tensor) -> torch.Tensor:
    time.sleep(SLOW_S)  # the deliberately slow part the profile must find
    return x + 1


def fast_remote(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def hold() -> None:
    """While the file named by OBSERVE_HOLD_FILE exists, a (re)started worker waits before
    joining: e2e/tests/test_observe.py keeps a killed member down while it looks at the group."""
    path = os.environ.get("OBSERVE_HOLD_FILE")
    while path and os.path.exists(path):
        time.sleep(0.2)


def main() -> None:
    hold()
    me = rpcjob.init_rpc()
    print(f"{me.worker_name}: joined with rank {me.rank}", flush=True)
    if me.role == "server":
        threading.Event().wait()  # serve until the run is stopped (SIGTERM drains)
    x = torch.ones(4)
    n = 0
    while True:
        try:
            rpc.rpc_sync("server_0", slow_remote, args=(x,))
            for _ in range(5):
                rpc.rpc_sync("server_0", fast_remote, args=(x,))
        except RuntimeError as err:  # the server is restarting or the run is stopping
            print(f"{me.worker_name}: rpc failed ({err}); retrying", flush=True)
            time.sleep(0.5)
        n += 1
        if n % 50 == 0:
            print(f"{me.worker_name}: {n} rounds", flush=True)


if __name__ == "__main__":
    main()
