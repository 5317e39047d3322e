"""Store-level crash recovery with real torch processes and torch's own TCPStore (no sidecar).

Shows what docs/architecture.md#recovery relies on, end to end: a join racing a dead
member fails fast (not after the store timeout); the cleaner's plan (rpcjob.sidecar.cleanup,
applied here to torch's own store) plus agent evictions heal the group; an in-process retry
with a fresh rank joins; a joiner SIGKILLed inside the critical section is recovered by a
token takeover.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch.distributed as dist
from test_worker_kit import Proc

from rpcjob import torchkeys as tk
from rpcjob.sidecar import cleanup

STORE_TIMEOUT = 30.0
KNOWN = ("w_0", "w_1", "w_2", "w_3", "w_9", "w_10")


@pytest.fixture
def master() -> Iterator[tuple[dist.TCPStore, int]]:
    store = dist.TCPStore(
        "127.0.0.1",
        0,  # the store binds a port itself: no window for another process to take it
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=STORE_TIMEOUT),
    )
    yield store, store.port


def _state(store: dist.TCPStore, live: dict[int, str], cleaning: Cleaning) -> cleanup.StoreState:
    def get(key: str) -> str | None:
        return store.get(key).decode() if store.check([key]) else None

    names = {r: get(tk.name_key(r)) for r in range(16)}
    addrs = {n for n in KNOWN if store.check([tk.addr_key(n)])}
    return cleanup.StoreState(
        dict(live),
        token=get(tk.TOKEN_KEY),
        all_infos=get(tk.ALL_WORKER_INFOS_KEY),
        names={r: n for r, n in names.items() if n is not None},
        addrs=addrs,
        evicts=cleaning.evicts,
        acks=cleaning.acks,
        waiters=cleaning.waiters,
    )


@dataclass
class Cleaning:
    """What the sidecar's cleaner keeps in etcd beside torch's keys."""

    evicts: dict[tuple[str, int], cleanup.EvictRequest] = field(default_factory=dict)
    acks: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    waiters: set[str] = field(default_factory=set)


def _clean(store: dist.TCPStore, survivors: dict[tuple[str, int], Proc]) -> None:
    """What the sidecar's elected cleaner does: plan_cleanup's actions, applied to torch's
    TCPStore one at a time (the survivors' EVICT acks are the test's asks)."""
    live = {r: n for n, r in survivors}
    c = Cleaning()
    for _ in range(20):
        match cleanup.plan_cleanup(_state(store, live, c), time.time(), STORE_TIMEOUT):
            case None:
                assert not c.evicts
                return
            case cleanup.DeleteStale(names, addrs):
                for r, n in names.items():
                    if store.get(tk.name_key(r)).decode() == n:
                        store.delete_key(tk.name_key(r))
                for a in addrs:
                    store.delete_key(tk.addr_key(a))
            case cleanup.TakeToken(holder):
                store.delete_key(tk.waiter_key(tk.CLEANER_TOKEN))
                got = store.compare_set(tk.TOKEN_KEY, holder, tk.CLEANER_TOKEN).decode()
                assert got == tk.CLEANER_TOKEN
                c.waiters |= {holder} - {""}
            case cleanup.Publish(infos, evicts):
                if infos is not None:
                    store.set(tk.ALL_WORKER_INFOS_KEY, infos)
                for name, rank in evicts:
                    c.evicts[(name, rank)] = cleanup.EvictRequest(name, rank, time.time())
                    for (_, r), s in survivors.items():
                        assert s.ask(f"evict {name} {rank}", "EVICTED").split()[1] == name
                        c.acks.setdefault((name, rank), set()).add(r)
            case cleanup.Release(done):
                store.set(tk.TOKEN_KEY, "")  # torch's order: the token, then the waiter keys
                for holder in sorted(c.waiters):
                    store.set(tk.waiter_key(holder), tk.DONE)
                store.set(tk.waiter_key(tk.CLEANER_TOKEN), tk.DONE)
                c.waiters.clear()
                for ident in done:
                    del c.evicts[ident]
                    c.acks.pop(ident, None)
            case other:
                raise AssertionError(f"unexpected cleanup step {other}")
    raise AssertionError("cleanup did not finish in 20 steps")


@pytest.mark.slow
def test_crash_recovery_over_tcpstore(master: tuple[dist.TCPStore, int]) -> None:
    store, port = master
    procs: dict[str, Proc] = {}

    def start(name: str, rank: int, **env: str) -> Proc:
        p = Proc.spawn(
            ["tcp", name, str(rank), str(port), str(STORE_TIMEOUT)], env={**os.environ, **env}
        )
        procs[name] = p
        return p

    try:
        for i in range(3):
            start(f"w_{i}", i).expect("JOINED")
        procs["w_1"].kill()

        # a join racing the dead member fails fast (the child times its init_rpc call); its
        # token and keys are left to the cleaner, which evicts both w_1-1 and w_3-3
        joiner = start("w_3", 3)
        line = joiner.expect("JOINFAIL", timeout=240)
        assert float(line.split()[1]) < STORE_TIMEOUT / 2, line
        assert store.get(tk.TOKEN_KEY).decode() == tk.worker_token("w_3", "join")

        _clean(store, {("w_0", 0): procs["w_0"], ("w_2", 2): procs["w_2"]})
        assert store.get(tk.ALL_WORKER_INFOS_KEY) == b"w_0-0,w_2-2,"
        assert store.get(tk.TOKEN_KEY) == b""
        # in-process retry with a fresh rank (torch's prefix counter and autograd id reset)
        joiner.send("retry 4")
        assert joiner.expect("JOINED").split()[1:3] == ["w_3", "4"]
        for s in (procs["w_0"], procs["w_2"]):
            assert json.loads(s.ask("ping w_3", "PING").split(" ", 1)[1]) == []
        assert json.loads(joiner.ask("ping w_0 w_2", "PING").split(" ", 1)[1]) == []
        members = json.loads(joiner.ask("members", "MEMBERS").split(" ", 1)[1])
        assert members == [["w_0", 0], ["w_2", 2], ["w_3", 4]]

        # a joiner SIGKILLed inside the critical section: the token is taken over
        dying = start("w_9", 9, RPCJOB_TEST_HOOK="die-in-critical-section")
        assert dying.p.wait(timeout=120) == -9
        assert store.get(tk.TOKEN_KEY).decode() == tk.worker_token("w_9", "join")
        _clean(store, {("w_0", 0): procs["w_0"], ("w_2", 2): procs["w_2"], ("w_3", 4): joiner})
        late = start("w_10", 10)
        assert float(late.expect("JOINED", timeout=240).split()[3]) < STORE_TIMEOUT / 2
        assert json.loads(late.ask("ping w_0 w_2 w_3", "PING").split(" ", 1)[1]) == []
        assert "w_9" not in store.get(tk.ALL_WORKER_INFOS_KEY).decode()
    finally:
        for p in procs.values():
            p.kill()
