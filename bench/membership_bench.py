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
import datetime
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CHILD = r"""
import json, os, sys, time
import torch.distributed.rpc as rpc
mode, name, rank, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def out(*a):
    print(*a, flush=True)
if mode in ("plain", "default"):
    kw = dict(num_worker_threads=4, rpc_timeout=120) if mode == "plain" else {}
    opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}", **kw)
    t0 = time.monotonic()
    rpc.init_rpc(name, rank=rank, world_size=None, rpc_backend_options=opts)
    out("JOINED", name, rank, f"{time.monotonic() - t0:.4f}")
    leave = rpc.shutdown
else:
    import rpcjob
    import rpcjob.store, rpcjob.worker.api, rpcjob.worker.join, rpcjob.worker.guard_store
    import rpcjob.devices.agent  # imports are not join latency
    t0 = time.monotonic()
    ident = rpcjob.init_rpc()
    out("JOINED", ident.worker_name, ident.rank, f"{time.monotonic() - t0:.4f}",
        json.dumps(rpcjob.worker.api.join_timings))
    leave = rpcjob.shutdown
from rpcjob.devices import agent
for line in sys.stdin:
    cmd = line.split()
    if cmd and cmd[0] == "members":
        out("MEMBERS", json.dumps(agent.current_members()))
    elif cmd and cmd[0] == "leave":
        leave()
        out("LEFT")
        break
"""


CHILD_ARGV = [sys.executable, "-c", CHILD]
PIPES: dict[str, Any] = {
    "stdin": subprocess.PIPE,
    "stdout": subprocess.PIPE,
    "stderr": subprocess.STDOUT,
    "text": True,
}


def _popen(argv: list[str]) -> subprocess.Popen[str]:
    """A child tied to this process (SIGKILL of the bench takes it down too)."""
    from rpcjob_operator.localexec import lifeline

    cmd, fds = lifeline.wrap(argv)
    return subprocess.Popen(cmd, pass_fds=fds, start_new_session=True, **PIPES)


class Child:
    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.p = popen
        self.q: queue.Queue[str] = queue.Queue()
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def plain(cls, name: str, rank: int, port: int) -> Child:
        return cls(_popen([*CHILD_ARGV, "plain", name, str(rank), str(port)]))

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.tail = [*self.tail[-30:], line.rstrip()]
            self.q.put(line.rstrip())
        self.q.put("EOF")

    def expect(self, prefix: str, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
            if line == "EOF":
                break
        raise RuntimeError(f"no {prefix!r} from child; last output:\n" + "\n".join(self.tail))

    def ask(self, cmd: str, prefix: str) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.expect(prefix)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tcp_master() -> tuple[int, Any]:
    """A TCPStore server on a free loopback port for torch's own group (members use ranks 1..N)."""
    import torch.distributed as dist

    port = _free_port()
    master = dist.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    return port, master


def _rss_mib(pids: list[int]) -> float:
    """Anonymous resident memory of ``pids`` together (MiB): what each member costs on top of
    the shared library pages."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total += int(line.split()[1])
    return total / 1024


def tcpstore_join(n: int, repeats: int, budget: float = 0.0) -> float | None:
    """Median seconds of the N-th join into torch's own group of N-1 over a TCPStore; None when
    the group of N-1 is not formed within ``budget`` seconds (0: no limit)."""
    port, master = _tcp_master()
    members: list[Child] = []
    times: list[float] = []
    t0 = last = time.monotonic()
    try:
        # rank 0 of torch's tcp:// handler would start its own server: members use 1..N
        for lo in range(1, n, BATCH):  # a few at a time: 2 shared cores
            cpu0 = sum(_cpu_s(m.p.pid) for m in members)
            batch = [Child.plain(f"w_{i}", i, port) for i in range(lo, min(n, lo + BATCH))]
            left = budget - (time.monotonic() - t0) if budget else 300.0
            for m in batch:
                m.expect("JOINED", timeout=max(1.0, left))
            now = time.monotonic()
            busy = (sum(_cpu_s(m.p.pid) for m in members) - cpu0) / (now - last)
            members += batch
            if n > 16:  # the slow builds: say how far they got
                print(f"  anchor N={n}: {len(members)} of {n - 1} joined, {now - t0:6.1f} s "
                      f"(this batch {now - last:5.1f} s; the earlier members used {busy:4.1f} "
                      f"cores meanwhile); {_load()}", flush=True)  # fmt: skip
            last = now
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


# --- rpcjob: real sidecars (tests/podkit.py pods) + workers joining via rpcjob.init_rpc() -----
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


# the anchor's TensorPipe options: 4 RPC threads, 120 s rpc timeout
SAME_AS_ANCHOR = {"RPCJOB_RPC_THREADS": "4", "RPCJOB_RPC_TIMEOUT": "120"}


def _start_pods(job: Any, indexes: range) -> list[tuple[Any, Child]]:
    pods = [job.pod("worker", i, start=False) for i in indexes]
    for p in pods:
        p.start_sidecar(wait=False)
    from podkit import wait_for

    for p in pods:
        wait_for(p._sidecar_up, 300, f"sidecar {p.name}")
    out = []
    for p in pods:
        out.append((p, Child(p.start_worker([*CHILD_ARGV, "rpcjob", "-", "0", "0"], **PIPES))))
    return out


def rpcjob_join(endpoint: str, workdir: Path, n: int, repeats: int) -> float:
    """Median seconds of the N-th join into an rpcjob group of N-1 (pods: sidecar + worker)."""
    from podkit import Job

    job = Job(endpoint, workdir / f"join{n}", slots={"worker": n + repeats + 1}, env=SAME_AS_ANCHOR)
    times: list[float] = []
    t0 = time.monotonic()
    try:
        for lo in range(0, n - 1, BATCH):  # a few at a time: 2 shared cores
            for _, child in _start_pods(job, range(lo, min(n - 1, lo + BATCH))):
                child.expect("JOINED")
            if n > 16:
                print(f"  rpcjob N={n}: {min(n - 1, lo + BATCH)} of {n - 1} joined, "
                      f"{time.monotonic() - t0:6.1f} s; {_load()}", flush=True)  # fmt: skip
        for r in range(repeats):
            ((pod, joiner),) = _start_pods(job, range(n - 1 + r, n + r))
            times.append(float(joiner.expect("JOINED").split()[3]))
            joiner.ask("leave", "LEFT")
            joiner.p.wait(timeout=120)
            pod.stop_sidecar()
    finally:
        job.close()
    return statistics.median(times)


def heal(endpoint: str, workdir: Path, kill: str, size: int = 4, ttl: int = 3) -> float:
    """Seconds from SIGKILL (of a worker, or of a sidecar) until every survivor's agent view
    excludes the dead member, etcd's membership agrees and torch's token is free."""
    from podkit import Job, wait_for

    from rpcjob.etcd import Client

    job = Job(
        endpoint, workdir / f"heal-{kill}", lease_ttl=ttl, slots={"worker": size},
        env=SAME_AS_ANCHOR,
    )  # fmt: skip
    client = Client(endpoint)
    try:
        pods = _start_pods(job, range(size))
        for _, child in pods:
            child.expect("JOINED")
        (vpod, victim), survivors = pods[-1], [c for _, c in pods[:-1]]
        token_key = job.keys.store + "rpc_prefix_0/RpcGroupManagementToken"
        victim_name = vpod.name

        def healthy() -> bool:
            members = [kv.key.decode().rsplit("/", 1)[1] for kv in client.get_prefix(
                job.keys.members)]  # fmt: skip
            token = client.get(token_key)
            if victim_name in members or (token is not None and token.value != b""):
                return False
            for c in survivors:
                view = json.loads(c.ask("members", "MEMBERS").split(" ", 1)[1])
                if any(n == victim_name for n, _ in view):
                    return False
            return True

        t0 = time.monotonic()
        if kill == "worker":
            victim.kill()
        else:
            vpod.kill_sidecar()
        wait_for(healthy, 120, "the group to heal", interval=0.01)
        return time.monotonic() - t0
    finally:
        job.close()
        client.close()


IDLE_GROUP = 8


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_rate(pids: list[int], window: float) -> float:
    """CPU seconds per second of ``pids`` together over ``window`` seconds."""
    before, t0 = sum(_cpu_s(p) for p in pids), time.monotonic()
    time.sleep(window)  # the measurement window itself, not a synchronisation
    return (sum(_cpu_s(p) for p in pids) - before) / (time.monotonic() - t0)


def idle_cpu_plain(n: int, window: float) -> tuple[float, float]:
    """CPU-s/s and anonymous RSS (MiB) per member of an idle torch dynamic group (TCPStore,
    torch's default options)."""
    port, master = _tcp_master()
    members: list[Child] = []
    try:
        for lo in range(1, n + 1, BATCH):
            batch = [
                Child(_popen([*CHILD_ARGV, "default", f"w_{i}", str(i), str(port)]))
                for i in range(lo, min(n + 1, lo + BATCH))
            ]  # fmt: skip
            for m in batch:
                m.expect("JOINED")
            members += batch
        time.sleep(2.0)  # settle: the last join's replies and threads
        pids = [m.p.pid for m in members]
        return _idle_rate(pids, window) / n, _rss_mib(pids) / n
    finally:
        for m in members:
            m.kill()
        del master


def idle_cpu_rpcjob(endpoint: str, workdir: Path, n: int, window: float) -> dict[str, float]:
    """CPU-s/s per member of an idle rpcjob group (worker + sidecar), rpcjob's defaults."""
    from podkit import Job

    job = Job(endpoint, workdir / "idle", slots={"worker": n}, env={"RPCJOB_RPC_THREADS": "16"})
    try:
        pods = []
        for lo in range(0, n, BATCH):
            batch = _start_pods(job, range(lo, min(n, lo + BATCH)))
            for _, child in batch:
                child.expect("JOINED")
            pods += batch
        time.sleep(2.0)  # settle: the last join's events, device re-application
        workers = [c.p.pid for _, c in pods]
        sidecars = [p.sidecar.pid for p, _ in pods]
        w = _idle_rate(workers, window) / n
        s = _idle_rate(sidecars, window) / n
        mem = {"worker_mib": _rss_mib(workers) / n, "sidecar_mib": _rss_mib(sidecars) / n}
        return {"worker": w, "sidecar": s, "total": w + s, **mem}
    finally:
        job.close()


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
              f"{target}, lease TTL {ttl} s; {_load()})", flush=True)  # fmt: skip
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
    print(f"start: {_load()}", flush=True)
    with EmbeddedEtcd() as etcd, tempfile.TemporaryDirectory() as tmp:
        if "idle" in parts:
            result.update(_idle(etcd.endpoint, Path(tmp), args.idle_window))
        if "join" in parts:
            result.update(_joins(etcd.endpoint, Path(tmp), args))
        if "heal" in parts:
            result.update(_heals(etcd.endpoint, Path(tmp), args.ttl, args.heal_repeats))
    print(f"end: {_load()}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
