"""EtcdStore vs the raw rpcjob.etcd client vs torch's TCPStore, in one run.

    python3 bench/store_bench.py [--endpoint HOST:PORT] [--ops 20] [--rounds 60] [--waits 200]

Starts its own etcd (the ``etcd`` binary on PATH) unless ``--endpoint`` is given. For get,
set, add and compare_set it times every call, in ``--rounds`` interleaved rounds of ``--ops``
calls per contender (rotating who goes first), and reports ops/s = 1 / median call latency
and the ratios of those: on a shared machine other processes only ever add time and wreck
throughput averages; the median of many interleaved single-call samples is the stable figure.
The raw client does the least the same operation needs: get = one range, set = one put,
add = one optimistic CAS txn on the mod_revision it saw last (the same single round trip
EtcdStore uses), compare_set = one txn comparing the value. wait-notify: a waiter blocks in
``wait([key])``, another thread sets the key; latency is from just before the set to the
waiter's wake-up (p50 over ``--waits``).
Ends with one JSON line (docs/benchmarks.md lists the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from rpcjob.etcd import Client, Compare, Op
from rpcjob.store import EtcdStore
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

OPS = ("get", "set", "add", "compare_set")
D: Any = dist


def raw_ops(c: Client, prefix: bytes) -> dict[str, Callable[[int], Any]]:
    k = prefix + b"bench"
    c.put(k, b"v")
    ctr = prefix + b"ctr"
    state = {"value": 0, "rev": 0}
    cs = prefix + b"cs"
    c.put(cs, b"a")

    def add(_i: int) -> int:
        new = state["value"] + 1
        r = c.txn([Compare.mod_revision(ctr, "=", state["rev"])], [Op.put(ctr, str(new))],
                  [Op.get(ctr)])  # fmt: skip
        if r.succeeded:
            state["value"], state["rev"] = new, r.revision
        else:
            kv: Any = r.responses[0]
            state["value"], state["rev"] = int(kv.kvs[0].value), kv.kvs[0].mod_revision
        return new

    def compare_set(i: int) -> Any:
        exp, des = (b"a", b"b") if i % 2 == 0 else (b"b", b"a")
        r = c.txn([Compare.value(cs, "=", exp)], [Op.put(cs, des)], [Op.get(cs)])
        return des if r.succeeded else r.responses[0]

    return {
        "get": lambda _i: c.get(k),
        "set": lambda i: c.put(k, b"v"),
        "add": add,
        "compare_set": compare_set,
    }


def store_ops(s: Any) -> dict[str, Callable[[int], Any]]:
    s.set("bench", "v")
    s.set("cs", "a")

    def compare_set(i: int) -> Any:
        return s.compare_set("cs", *(("a", "b") if i % 2 == 0 else ("b", "a")))

    return {
        "get": lambda _i: s.get("bench"),
        "set": lambda _i: s.set("bench", "v"),
        "add": lambda _i: s.add("ctr", 1),
        "compare_set": compare_set,
    }


def timed(fn: Callable[[int], Any], n: int, out: list[float]) -> None:
    """Append the latency of each of ``n`` calls (seconds)."""
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)


def wait_notify_ms(waiter: Any, setter: Any, n: int) -> float:
    """p50 of set -> wake-up, the waiter blocked in wait() before the set."""
    lat: list[float] = []
    for i in range(n):
        key = f"wn-{uuid.uuid4().hex[:8]}-{i}"
        ready, woke = threading.Event(), [0.0]

        def wait(key: str = key, ready: threading.Event = ready, woke: list[float] = woke) -> None:
            ready.set()
            waiter.wait([key], timedelta(seconds=30))
            woke[0] = time.perf_counter()

        t = threading.Thread(target=wait)
        t.start()
        ready.wait(10)
        time.sleep(0.005)  # bench only: let the waiter block (read + watch) before the set
        t_set = time.perf_counter()
        setter.set(key, "1")
        t.join(30)
        lat.append((woke[0] - t_set) * 1000)
    return statistics.median(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", help="use this etcd (host:port) instead of starting one")
    ap.add_argument("--ops", type=int, default=20, help="calls per contender per round")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--waits", type=int, default=200, help="wait-notify samples")
    a = ap.parse_args()

    server = None if a.endpoint else EmbeddedEtcd().start()
    endpoint = a.endpoint or (server.endpoint if server else "")
    prefix = f"/rpcjob-bench/{uuid.uuid4().hex}/"
    try:
        raw_client = Client(endpoint)
        store = EtcdStore(endpoint, prefix=prefix, timeout=timedelta(seconds=30))
        tcp = D.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30),
                         wait_for_workers=False)  # fmt: skip
        tcp2 = D.TCPStore("127.0.0.1", tcp.port, 1, False, timeout=timedelta(seconds=30))
        contenders = {
            "raw": raw_ops(raw_client, prefix.encode() + b"raw/"),
            "etcdstore": store_ops(store),
            "tcpstore": store_ops(tcp),
        }
        for ops in contenders.values():  # warm up channels, caches
            for fn in ops.values():
                timed(fn, 20, [])
        lat: dict[str, dict[str, list[float]]] = {c: {o: [] for o in OPS} for c in contenders}
        names = list(contenders)
        for r in range(a.rounds):
            for op in OPS:
                for name in names[r % 3 :] + names[: r % 3]:  # rotate who goes first
                    timed(contenders[name][op], a.ops, lat[name][op])
        wn = {
            "etcdstore": wait_notify_ms(store, EtcdStore(endpoint, prefix=prefix), a.waits),
            "tcpstore": wait_notify_ms(tcp, tcp2, a.waits),
        }
    finally:
        if server is not None:
            server.close()

    rate = {c: {o: 1.0 / statistics.median(lat[c][o]) for o in OPS} for c in contenders}
    p90 = {c: {o: 1.0 / statistics.quantiles(lat[c][o], n=10)[-1] for o in OPS} for c in lat}

    def ratio(x: str, y: str, op: str) -> float:
        return round(rate[x][op] / rate[y][op], 3)

    print(f"store bench: etcd {endpoint}, {a.rounds} rounds x {a.ops} ops, {a.waits} waits")
    print("ops/s = 1 / median latency of one call (1 / p90 latency in brackets)")
    print(f"{'op':<12}{'raw':>17}{'EtcdStore':>17}{'TCPStore':>19}{'ES/raw':>8}{'ES/TCP':>8}")
    for op in OPS:
        cells = "".join(f"{rate[c][op]:>9.0f} ({p90[c][op]:>6.0f})" for c in contenders)
        print(
            f"{op:<12}{cells}"
            f"{ratio('etcdstore', 'raw', op):>8.3f}{ratio('etcdstore', 'tcpstore', op):>8.3f}"
        )
    print(f"wait-notify p50: EtcdStore {wn['etcdstore']:.3f} ms, TCPStore {wn['tcpstore']:.3f} ms")
    print(
        json.dumps(
            {
                "etcdstore_vs_raw": {op: ratio("etcdstore", "raw", op) for op in OPS},
                "etcdstore_vs_tcpstore": {op: ratio("etcdstore", "tcpstore", op) for op in OPS},
                "wait_notify_ms_p50": round(wn["etcdstore"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
