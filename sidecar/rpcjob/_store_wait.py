"""EtcdStore's wait: block until keys exist, by reading and then watching (no polling).

Each key is read, then watched from the read revision + 1, so a key set between the read and
the watch is not missed; the client's watch stream resumes from its last revision after an
etcd restart, and a compacted start revision reads again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rpcjob.etcd import Client, EtcdCompacted, EtcdError, WatchEvent


@dataclass(slots=True, eq=False)
class _Waiter:
    """Watch callback state of one ``wait``: the keys still missing (all callbacks run on the
    client's single watch thread, in revision order, so no lock is needed)."""

    missing: set[bytes]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def on_events(self, events: list[WatchEvent]) -> None:
        # A key set since the read counts even if deleted again at once (TCPStore wakes its
        # waiters on the set): torch's token waiter key may be set "Done" and then deleted by
        # the next holder in the same watch batch.
        self.missing.difference_update(ev.kv.key for ev in events if ev.type == "PUT")
        if not self.missing:
            self.done.set()

    def on_error(self, err: BaseException) -> None:
        self.error = err
        self.done.set()


def wait_for_keys(client: Client, ks: list[bytes], deadline: float) -> bool:
    """True once every key of ``ks`` exists, False when ``deadline`` (monotonic) passes first;
    an etcd failure raises its EtcdError."""
    while True:
        missing: dict[bytes, int] = {}
        for k in ks:
            remaining = max(deadline - time.monotonic(), 0.001)
            r = client.range(k, count_only=True, timeout=remaining)
            if not r.count:
                missing[k] = r.revision
        if not missing:
            return True
        waiter = _Waiter(set(missing))
        watches = [
            client.watch(
                k, start_revision=rev + 1, callback=waiter.on_events, on_error=waiter.on_error
            )
            for k, rev in missing.items()
        ]
        try:
            woke = waiter.done.wait(max(deadline - time.monotonic(), 0))
        finally:
            for w in watches:
                w.cancel()
        err = waiter.error
        if err is not None and not waiter.missing:
            return True
        if isinstance(err, EtcdCompacted):
            continue  # history gone: read the keys again, watch from the new revision
        if isinstance(err, EtcdError):
            raise err
        return woke
