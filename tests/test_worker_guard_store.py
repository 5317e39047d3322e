"""GuardStore over a real TCPStore: the fixes it makes to torch's membership critical section."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator

import pytest
import torch.distributed as dist

from rpcjob import torchkeys as tk
from rpcjob.worker.guard_store import GuardStore, TokenSelfWait

TOKEN = tk.TOKEN_KEY
MINE = tk.worker_token("w_1", "join")


@pytest.fixture
def store() -> Iterator[dist.TCPStore]:
    # port 0: the store binds a port itself (no window for another process to take it)
    yield dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                        timeout=datetime.timedelta(seconds=30))  # fmt: skip


def test_take_token_deletes_stale_waiter_key_and_refuses_self_wait(store: dist.TCPStore) -> None:
    store.set(tk.waiter_key(MINE), "Done")  # left by an earlier hold: waiters would spin
    g = GuardStore(store, "w_1", 4)
    assert g.compare_set(TOKEN, "", MINE) == MINE.encode()
    assert g.holding == MINE
    assert not store.check([tk.waiter_key(MINE)])
    with pytest.raises(TokenSelfWait, match="that this process holds"):
        g.wait([tk.waiter_key(MINE)])
    g.set(TOKEN, "")  # torch's release
    assert g.holding is None


def test_token_held_by_a_dead_incarnation_of_my_name_is_waited_out(
    store: dist.TCPStore,
) -> None:
    store.set(TOKEN, MINE)  # the crashed previous w_1 holds it under the same value
    g = GuardStore(store, "w_1", 4)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(g.compare_set(TOKEN, "", MINE)))
    t.start()
    t.join(0.5)
    assert t.is_alive() and g.holding is None  # torch would have believed it holds it
    # the cleaner takes the token over and releases it in torch's order (rpcjob.sidecar.cleaner)
    assert store.compare_set(TOKEN, MINE, tk.CLEANER_TOKEN) == tk.CLEANER_TOKEN.encode()
    store.set(TOKEN, "")
    store.set(tk.waiter_key(tk.CLEANER_TOKEN), tk.DONE)
    t.join(30)
    assert got == [MINE.encode()] and g.holding == MINE
