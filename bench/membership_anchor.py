"""The anchor of bench/membership_bench.py: torch's own dynamic RPC group
(``init_rpc(world_size=None)``) over a TCPStore, measured in the same run as rpcjob.
"""

from __future__ import annotations

import datetime
import statistics
import time
from typing import Any

from bench_host import cpu_rate, cpu_s, free_port, load, rss_anon_mib
from membership_child import BATCH, CHILD_ARGV, Child, popen


def _tcp_master() -> tuple[int, Any]:
    """A TCPStore server on a free loopback port for torch's own group (members use ranks 1..N)."""
    import torch.distributed as dist

    port = free_port()
    master = dist.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    return port, master


def _build(n: int, port: int, members: list[Child], budget: float, t0: float) -> None:
    """Join members 1..N-1 a batch at a time into ``members``, printing progress for big N."""
    last = t0
    # rank 0 of torch's tcp:// handler would start its own server: members use 1..N
    for lo in range(1, n, BATCH):  # a few at a time: 2 shared cores
        cpu0 = sum(cpu_s(m.p.pid) for m in members)
        batch = [Child.plain(f"w_{i}", i, port) for i in range(lo, min(n, lo + BATCH))]
        left = budget - (time.monotonic() - t0) if budget else 300.0
        for m in batch:
            m.expect("JOINED", timeout=max(1.0, left))
        now = time.monotonic()
        busy = (sum(cpu_s(m.p.pid) for m in members) - cpu0) / (now - last)
        members += batch
        if n > 16:  # the slow builds: say how far they got
            print(f"  anchor N={n}: {len(members)} of {n - 1} joined, {now - t0:6.1f} s "
                  f"(this batch {now - last:5.1f} s; the earlier members used {busy:4.1f} "
                  f"cores meanwhile); {load()}", flush=True)  # fmt: skip
        last = now


def tcpstore_join(n: int, repeats: int, budget: float = 0.0) -> float | None:
    """Median seconds of the N-th join into torch's own group of N-1 over a TCPStore; None when
    the group of N-1 is not formed within ``budget`` seconds (0: no limit)."""
    port, master = _tcp_master()
    members: list[Child] = []
    times: list[float] = []
    t0 = time.monotonic()
    try:
        _build(n, port, members, budget, t0)
        for r in range(repeats):
            joiner = Child.plain(f"j_{r}", n + r, port)
            times.append(float(joiner.expect("JOINED").split()[3]))
            joiner.ask("leave", "LEFT")
            joiner.kill()
    except RuntimeError as e:
        if not budget or time.monotonic() - t0 < budget:
            raise
        print(f"  anchor N={n}: gave up after {time.monotonic() - t0:.0f} s (--anchor-budget) "
              f"with {len(members)} of {n - 1} members joined: {str(e).splitlines()[0]}",
              flush=True)  # fmt: skip
        return None
    finally:
        for m in members:
            m.kill()
        del master
    return statistics.median(times)


def idle_cpu_plain(n: int, window: float) -> tuple[float, float]:
    """CPU-s/s and anonymous RSS (MiB) per member of an idle torch dynamic group (TCPStore,
    torch's default options)."""
    port, master = _tcp_master()
    members: list[Child] = []
    try:
        for lo in range(1, n + 1, BATCH):
            batch = [
                Child(popen([*CHILD_ARGV, "default", f"w_{i}", str(i), str(port)]))
                for i in range(lo, min(n + 1, lo + BATCH))
            ]  # fmt: skip
            for m in batch:
                m.expect("JOINED")
            members += batch
        time.sleep(2.0)  # settle: the last join's replies and threads
        pids = [m.p.pid for m in members]
        return cpu_rate(pids, window) / n, rss_anon_mib(pids) / n
    finally:
        for m in members:
            m.kill()
        del master
