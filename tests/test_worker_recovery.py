"""Store-level crash recovery with real torch processes and torch's own TCPStore (no sidecar).

Shows what docs/architecture.md#recovery relies on, end to end: a join racing a dead
member fails fast (not after the store timeout) and releases the token; the torchkeys plan
plus agent evictions heal the group; an in-process retry with a fresh rank joins; a joiner
SIGKILLed inside the critical section is recovered by a token takeover.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator

import pytest
import torch.distributed as dist
from test_worker_kit import Proc

from rpcjob import torchkeys as tk

STORE_TIMEOUT = 30.0


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


def _clean(store: dist.TCPStore, name: str, rank: int, survivors: list[Proc]) -> None:
    """What the sidecar's elected cleaner does, with the torchkeys decisions."""
    token = store.get(tk.TOKEN_KEY).decode()
    decision = tk.decide_token(token, {name})
    assert decision.action in (tk.TokenAction.TAKE_FREE, tk.TokenAction.TAKE_OVER)
    store.delete_key(tk.waiter_key(tk.CLEANER_TOKEN))
    assert store.compare_set(tk.TOKEN_KEY, decision.expected, tk.CLEANER_TOKEN).decode() == (
        tk.CLEANER_TOKEN
    )
    owner = store.get(tk.name_key(rank)).decode() if store.check([tk.name_key(rank)]) else None
    plan = tk.plan_eviction(name, rank, store.get(tk.ALL_WORKER_INFOS_KEY).decode(), owner)
    for k, v in plan.set.items():
        store.set(k, v)
    for k in plan.delete:
        store.delete_key(k)
    for s in survivors:
        assert s.ask(f"evict {name} {rank}", "EVICTED").split()[1] == name
    for k, v in tk.release_steps():
        store.set(k, v)


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

        # a join racing the dead member fails fast (the child times its init_rpc call) and
        # frees the token it held
        joiner = start("w_3", 3)
        line = joiner.expect("JOINFAIL", timeout=240)
        assert float(line.split()[1]) < STORE_TIMEOUT / 2, line
        assert line.split()[2] == "True", line  # released the token itself
        assert store.get(tk.TOKEN_KEY) == b""
        assert "w_3-3," not in store.get(tk.ALL_WORKER_INFOS_KEY).decode()

        _clean(store, "w_1", 1, [procs["w_0"], procs["w_2"]])
        for s in (procs["w_0"], procs["w_2"]):
            s.ask("evict w_3 3", "EVICTED")
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
        _clean(store, "w_9", 9, [procs["w_0"], procs["w_2"], joiner])
        late = start("w_10", 10)
        assert float(late.expect("JOINED", timeout=240).split()[3]) < STORE_TIMEOUT / 2
        assert json.loads(late.ask("ping w_0 w_2 w_3", "PING").split(" ", 1)[1]) == []
        assert "w_9" not in store.get(tk.ALL_WORKER_INFOS_KEY).decode()
    finally:
        for p in procs.values():
            p.kill()
