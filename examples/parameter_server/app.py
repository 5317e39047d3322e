"""Parameter server with elastic trainers.

Roles: ``ps`` (one replica) holds a linear model behind an RRef; ``worker`` replicas are
trainers that join and leave at any time. Each trainer pulls the parameters, computes a
gradient on its own synthetic batch and pushes it; the server applies it (SGD). When the
server has applied ``EXAMPLE_STEPS`` updates it reports ``done`` to every trainer, which
then leaves gracefully, and the server exits 0 — the job's success policy is "role ps
succeeded". A trainer that is drained (scale-down, SIGTERM) first pushes the gradient it is
holding (``rpcjob.on_drain``), so no work is lost.
"""

from __future__ import annotations

import gc
import os
import threading
import time

import torch
import torch.distributed.rpc as rpc

import rpcjob

DIM = 16
STEPS = int(os.environ.get("EXAMPLE_STEPS", "300"))
PS_NAME = "ps_0"
TRUE_W = torch.arange(DIM, dtype=torch.float32) / DIM


class ParameterServer:
    def __init__(self) -> None:
        self.w = torch.zeros(DIM)
        self.lr = 0.05
        self.updates = 0
        self.contributors: set[str] = set()
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def get_params(self) -> torch.Tensor:
        with self.lock:
            return self.w.clone()

    def push(self, trainer: str, grad: torch.Tensor) -> bool:
        """Apply one gradient; returns True once training is done."""
        with self.lock:
            if self.updates < STEPS:
                self.w -= self.lr * grad
                self.updates += 1
                self.contributors.add(trainer)
                if self.updates % 50 == 0:
                    loss = float(((self.w - TRUE_W) ** 2).sum())
                    print(
                        f"ps: {self.updates} updates, |w - w*|^2 = {loss:.5f}, "
                        f"trainers so far: {sorted(self.contributors)}",
                        flush=True,
                    )
            if self.updates >= STEPS:
                self.finished.set()
            return self.finished.is_set()


# The server's state: made at import, because it must exist before ps_0 joins (a trainer may
# call at once). The trainers' processes never use theirs.
PS = ParameterServer()


def ps_rref() -> rpc.RRef[ParameterServer]:
    """Runs on the server: hands trainers an RRef to the one ParameterServer."""
    return rpc.RRef(PS)


def _call_get_params(rref: rpc.RRef[ParameterServer]) -> torch.Tensor:
    return rref.local_value().get_params()


def _call_push(rref: rpc.RRef[ParameterServer], trainer: str, grad: torch.Tensor) -> bool:
    return rref.local_value().push(trainer, grad)


def serve(_name: str) -> int:
    PS.finished.wait()
    loss = float(((PS.w - TRUE_W) ** 2).sum())
    print(f"ps: done after {PS.updates} updates, final |w - w*|^2 = {loss:.5f}", flush=True)
    # Trainers see `done` on their next push and leave; give them a moment to release their
    # RRefs first (leaving is graceful either way).
    deadline = time.monotonic() + 30
    while rpcjob.members("worker") and time.monotonic() < deadline:
        time.sleep(0.1)
    return 0 if loss < 0.5 else 1


def train(name: str) -> int:
    gen = torch.Generator().manual_seed(hash(name) % 2**31)
    pending: list[torch.Tensor] = []
    lock = threading.Lock()
    state = {"done": False}

    rpcjob.wait_for_member("ps")  # trainers may start before the server has joined
    refs: list[rpc.RRef[ParameterServer]] = []  # a list: released before leaving

    def flush() -> None:
        # Drained (scale-down): hand in the gradient we hold before leaving.
        with lock:
            for grad in pending:
                state["done"] = rpc.rpc_sync(PS_NAME, _call_push, args=(refs[0], name, grad))
            pending.clear()

    rpcjob.on_drain(flush)
    # Every call to the server is in the try, the first one too: a trainer that joins as the
    # server finishes sees it listed, and it can leave before that first call reaches it.
    try:
        refs.append(rpc.rpc_sync(PS_NAME, ps_rref))
        while not state["done"]:
            w = rpc.rpc_sync(PS_NAME, _call_get_params, args=(refs[0],))
            x = torch.randn(32, DIM, generator=gen)
            y = x @ TRUE_W
            grad = 2 * x.T @ (x @ w - y) / len(x)
            with lock:
                pending.append(grad)
            flush()
    except RuntimeError as exc:
        # The server finished and left (before our first call or between two): training is over.
        if rpcjob.members("ps"):
            raise
        print(f"{name}: server has left ({exc.__class__.__name__}); leaving", flush=True)
    else:
        print(f"{name}: server reports done; leaving", flush=True)
    refs.clear()  # release our RRef fork before leaving, so the owner sees no leak
    gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(rpcjob.run_role({"ps": serve, "worker": train}))
