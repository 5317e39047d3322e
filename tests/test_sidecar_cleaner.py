"""The cleaner's executor against a real etcd, on torch keys seeded exactly as torch 2.13 writes
them: it edits only as the elected cleaner, and a run of steps reaches the cleaned state."""

from __future__ import annotations

import json
import uuid

from rpcjob import contract as c
from rpcjob import torchkeys as tk
from rpcjob.etcd import Client
from rpcjob.sidecar.cleaner import Cleaner


def seed(client: Client, keys: c.JobKeys) -> None:
    """a_0 (rank 0) live; b_1 (rank 1) crashed while holding its join token."""
    s = keys.store
    lease = client.lease_grant(30)
    client.put(keys.rank(0), json.dumps({"worker": "a_0", "rank": 0}), lease=lease.id)
    client.put(s + tk.TOKEN_KEY, tk.worker_token("b_1", "join"))
    client.put(s + tk.ALL_WORKER_INFOS_KEY, "a_0-0,b_1-1,")
    client.put(s + tk.name_key(0), "a_0")
    client.put(s + tk.name_key(1), "b_1")
    client.put(s + tk.addr_key("a_0"), "uv://10.0.0.1:1")
    client.put(s + tk.addr_key("b_1"), "uv://10.0.0.2:1")
    # a_0's ack (its sidecar would write it when its worker applied the EVICT)
    client.put(keys.evict_ack("b_1", 1, 0), "1", lease=lease.id)


def snapshot(client: Client, keys: c.JobKeys) -> dict[str, bytes]:
    return {kv.key.decode(): kv.value for kv in client.get_prefix(keys.root)}


def test_only_the_elected_cleaner_writes_and_steps_reach_the_cleaned_state(
    etcd_endpoint: str,
) -> None:
    keys = c.JobKeys("ns", "j", uuid.uuid4().hex)
    with Client(etcd_endpoint) as client:
        seed(client, keys)
        client.put(keys.election, "111")
        cleaner = Cleaner(client, keys, ack_deadline=30)
        cleaner.leader_value = "222"  # deposed: someone else holds the election
        before = snapshot(client, keys)
        for _ in range(5):
            cleaner.step()
        assert snapshot(client, keys) == before

        cleaner.leader_value = "111"
        steps = 0
        while cleaner.step():
            steps += 1
            assert steps < 20
        s = keys.store
        get = lambda k: client.get(s + k)  # noqa: E731
        assert get(tk.ALL_WORKER_INFOS_KEY).value == b"a_0-0,"  # type: ignore[union-attr]
        assert get(tk.name_key(1)) is None and get(tk.addr_key("b_1")) is None
        assert get(tk.name_key(0)) is not None and get(tk.addr_key("a_0")) is not None
        assert get(tk.TOKEN_KEY).value == b""  # type: ignore[union-attr]
        # torch's release order: the dead holder's waiters and ours are woken with "Done"
        assert get(tk.waiter_key(tk.worker_token("b_1", "join"))).value == b"Done"  # type: ignore[union-attr]
        assert get(tk.waiter_key(tk.CLEANER_TOKEN)).value == b"Done"  # type: ignore[union-attr]
        assert not client.get_prefix(keys.evicts)
        assert not client.get_prefix(keys.evict_acks)
        assert not client.get_prefix(keys.token_waiters)
