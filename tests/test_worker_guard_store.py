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
    # the cleaner takes the token over and releases it (torchkeys.release_steps)
    assert store.compare_set(TOKEN, MINE, tk.CLEANER_TOKEN) == tk.CLEANER_TOKEN.encode()
    for key, value in tk.release_steps():
        store.set(key, value)
    t.join(30)
    assert got == [MINE.encode()] and g.holding == MINE


def test_release_failed_join_removes_my_entry_and_frees_the_token(store: dist.TCPStore) -> None:
    g = GuardStore(store, "w_1", 4)
    assert g.compare_set(TOKEN, "", MINE) == MINE.encode()
    store.set(tk.ALL_WORKER_INFOS_KEY, "w_0-0,w_1-4,")
    store.set(tk.name_key(4), "w_1")
    store.set(tk.addr_key("w_1"), "uv://127.0.0.1:1")
    assert g.release_failed_join()
    assert store.get(tk.ALL_WORKER_INFOS_KEY) == b"w_0-0,"
    assert not store.check([tk.name_key(4)]) and not store.check([tk.addr_key("w_1")])
    assert store.get(TOKEN) == b"" and store.get(tk.waiter_key(MINE)) == b"Done"
    assert not g.release_failed_join()  # nothing held any more
