"""Membership benchmark: join latency, idle CPU and SIGKILL -> healthy latency.

Anchor, measured in the same run: torch's own dynamic RPC group (``init_rpc(world_size=None)``)
over a TCPStore. For each N in (2, 8, 32, 64): a group of N-1 members is formed one join at a time,
then the N-th join is timed inside the joiner (the ``init_rpc`` call; for rpcjob this includes
the Hello to the sidecar, the etcd rank allocation and the EtcdStore) — median of --repeats
joins, each joiner leaving gracefully afterwards. Heal latency: SIGKILL a member (its worker,
or its sidecar, which takes the worker down) and time until a fresh worker has joined and every
survivor's agent view equals the etcd membership. Idle CPU: a joined group of 8 doing nothing,
CPU seconds per second per member over 10 s from /proc/<pid>/stat (rpcjob: worker + its
sidecar; anchor: plain torch dynamic workers with torch's default options).

    python3 bench/membership_bench.py [--sizes 2,8,32,64] [--repeats 3] [--parts idle,join,heal]
                                      [--anchor-budget SECONDS] [--heal-repeats 1]

Every child process is started through rpcjob's lifeline launcher, so a bench stopped by
``timeout`` (SIGTERM: the cleanup runs) or even SIGKILLed leaves no process behind. The
anchor's group build prints its progress (members joined, seconds, the members' CPU use); with
--anchor-budget it gives up after that many seconds and says how far it got.

Ends with one JSON line, the keys of the parts run: {"join_s": {...}, "join_vs_tcpstore":
{...} (null where the anchor did not finish), "idle_cpu_per_worker": x,
"idle_cpu_per_worker_anchor": x, "rss_mib_per_member": MiB, "rss_mib_per_member_anchor": MiB,
"heal_s_worker_kill": s, "heal_s_sidecar_kill": s}.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
from pathlib import Path
from typing import Any

from bench_host import load
from membership_anchor import idle_cpu_plain, tcpstore_join
from membership_pods import heal, idle_cpu_rpcjob, rpcjob_join

IDLE_GROUP = 8


def _idle(endpoint: str, tmp: Path, window: float) -> dict[str, float]:
    anchor, anchor_mib = idle_cpu_plain(IDLE_GROUP, window)
    idle = idle_cpu_rpcjob(endpoint, tmp, IDLE_GROUP, window)
    print(f"idle CPU per member, group of {IDLE_GROUP} over {window:g} s: rpcjob "
          f"{idle['total']:.4f} (worker {idle['worker']:.4f} + sidecar {idle['sidecar']:.4f})"
          f"   torch defaults {anchor:.4f} CPU-s/s  (target <= 0.02)", flush=True)  # fmt: skip
    print(
        f"anonymous RSS per member: rpcjob worker {idle['worker_mib']:.0f} MiB + sidecar "
        f"{idle['sidecar_mib']:.0f} MiB   torch defaults {anchor_mib:.0f} MiB",
        flush=True,
    )
    return {
        "idle_cpu_per_worker": round(idle["total"], 4),
        "idle_cpu_per_worker_anchor": round(anchor, 4),
        "rss_mib_per_member": round(idle["worker_mib"] + idle["sidecar_mib"]),
        "rss_mib_per_member_anchor": round(anchor_mib),
    }


def _joins(endpoint: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    join_s: dict[str, float] = {}
    ratio: dict[str, float | None] = {}
    for n in (int(x) for x in args.sizes.split(",")):
        # rpcjob first: the anchor's group of busy-polling workers may take long at N = 64
        ours = rpcjob_join(endpoint, tmp, n, args.repeats)
        print(f"N={n:>3}: join rpcjob {ours * 1000:8.1f} ms", flush=True)
        anchor = tcpstore_join(n, args.repeats, args.anchor_budget)
        shown = "did not finish" if anchor is None else f"{anchor * 1000:8.1f} ms"
        join_s[str(n)] = round(ours, 4)
        ratio[str(n)] = None if anchor is None else round(ours / anchor, 3)
        print(f"N={n:>3}: join rpcjob {ours * 1000:8.1f} ms   torch+TCPStore {shown}   ratio "
              f"{'-' if anchor is None else f'{ours / anchor:5.2f}x'}  (targets at 32 and 64: "
              "<= 1.0x on 2 cores, <= 0.5x on 16)", flush=True)  # fmt: skip
    return {"join_s": join_s, "join_vs_tcpstore": ratio}


def _heals(endpoint: str, tmp: Path, ttl: int, repeats: int) -> dict[str, float]:
    """Median of ``repeats`` heals after each kind of SIGKILL, each in a fresh group of 4."""
    out: dict[str, float] = {}
    for kill, target in (("worker", "0.1 s"), ("sidecar", f"TTL + 0.2 s = {ttl + 0.2:g} s")):
        times = [heal(endpoint, tmp / f"{kill}{r}", kill, ttl=ttl) for r in range(repeats)]
        med = statistics.median(times)
        runs = " ".join(f"{t:.3f}" for t in times)
        print(f"heal after SIGKILL of a {kill}: {med:6.3f} s median of [{runs}] (target <= "
              f"{target}, lease TTL {ttl} s; {load()})", flush=True)  # fmt: skip
        out[f"heal_s_{kill}_kill"] = round(med, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2,8,32,64")
    ap.add_argument("--idle-window", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ttl", type=int, default=3, help="lease TTL for the sidecar-kill case")
    ap.add_argument("--heal-repeats", type=int, default=1, help="heals per kind (median)")
    ap.add_argument("--parts", default="idle,join,heal", help="which measurements to run")
    ap.add_argument(
        "--anchor-budget",
        type=float,
        default=0.0,
        help="seconds the anchor may take to form each group (0: no limit)",
    )
    args = ap.parse_args()
    # `timeout` sends SIGTERM: exit through the finally blocks that kill our child processes
    # (orphaned torch workers with default options would busy-poll the machine's cores)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parts = set(args.parts.split(","))

    import tempfile

    from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

    result: dict[str, Any] = {}
    print(f"start: {load()}", flush=True)
    with EmbeddedEtcd() as etcd, tempfile.TemporaryDirectory() as tmp:
        if "idle" in parts:
            result.update(_idle(etcd.endpoint, Path(tmp), args.idle_window))
        if "join" in parts:
            result.update(_joins(etcd.endpoint, Path(tmp), args))
        if "heal" in parts:
            result.update(_heals(etcd.endpoint, Path(tmp), args.ttl, args.heal_repeats))
    print(f"end: {load()}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
