"""Scale-up benchmark: ``rpcjob run`` job scaled 2 -> 16, end to end.

From "replicas changed" (``rpcjob scale``'s request, made in this process with the same
function the command calls) until every member's agent lists all 16 and every member has
reached every other by RPC. Each worker (a real ``rpcjob run`` pod: sidecar + worker process)
records when it passed each phase, so the time splits into:

    created   replicas changed -> the pod's "created" event (the local executor's cycle)
    started   -> the worker process exists (/proc/<pid>/stat start time)
    imports   -> ``import torch, rpcjob`` done
    sidecar   -> the pod's sidecar answers on its socket
    rank      -> Hello returned: incarnation lease + rank allocated in etcd
    setup     -> EtcdStore built (rpcjob.init_rpc's own work between Hello and torch)
    join      -> torch's dynamic init_rpc returned (token, agent, members told)
    reach     -> this member sees all 16 and pinged every one

Anchor, measured in the same run: 16 plain torch processes started at once, joining a
TCPStore dynamic group (``init_rpc(world_size=None)``, torch's default options) and doing the
same all-to-all reachability check; timed from process start (spawn) to the last one's reach.

    python3 bench/scale_bench.py [--size 16] [--repeats 1] [--no-fork-server]

``rpcjob run`` forks the workers from its fork server (localexec/zygote.py) unless
``--no-fork-server`` is given: then every worker imports torch itself.

Ends with one JSON line: {"scale_2_16_s": s, "anchor_s": s, "scale_vs_anchor": x,
"phases_s": {...}}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Every child goes through rpcjob's lifeline launcher: a bench stopped by `timeout`, even with
# SIGKILL, leaves no process behind (the anchor's busy-polling workers would load the host).
from rpcjob_operator.localexec import lifeline

REPO = Path(__file__).resolve().parent.parent

# The member: phases stamped in wall-clock seconds, then a reachability loop. MODE "rpcjob"
# joins through rpcjob.init_rpc(); MODE "plain" through torch's tcp:// store (the anchor).
MEMBER = r"""
import json, os, sys, time
def proc_start():
    st = open("/proc/self/stat").read()
    ticks = int(st[st.rindex(")") + 2:].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age
T = {"started": proc_start(), "python": time.time()}
mode, out = os.environ["SCALE_MODE"], os.environ["SCALE_OUT"]
import torch
import torch.distributed.rpc as rpc
if mode == "rpcjob":
    import rpcjob, rpcjob.worker.api
    from rpcjob.worker.client import SidecarClient
    T["imports"] = time.time()
    SidecarClient(None).wait_ready(300)
    T["sidecar"] = time.time()
    ident = rpcjob.init_rpc(timeout=300)
    name, rank = ident.worker_name, ident.rank
    jt = rpcjob.worker.api.join_timings
    T["rank"] = T["sidecar"] + jt["hello"]
    T["setup"] = T["rank"] + jt["setup"]
else:
    T["imports"] = time.time()
    name, rank = sys.argv[1], int(sys.argv[2])
    opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{sys.argv[3]}")
    rpc.init_rpc(name, rank=rank, world_size=None, rpc_backend_options=opts)
T["join"] = time.time()
from rpcjob.devices import agent
def save(reach):
    tmp = f"{out}/.{name}.json"
    with open(tmp, "w") as f:
        json.dump({"name": name, "rank": rank, "t": T, "reach": reach}, f)
    os.replace(tmp, f"{out}/{name}.json")
reach = {}
save(reach)
while True:
    try:
        want = int(open(f"{out}/target").read())
    except (OSError, ValueError):
        want = 0
    members = agent.current_members()
    if want and str(want) not in reach and len(members) >= want:
        try:
            for peer, _ in members:
                rpc.rpc_sync(peer, torch.add, args=(torch.ones(1), 1), timeout=30)
            reach[str(want)] = time.time()
            save(reach)
        except Exception:
            pass  # a member still joining or leaving: try again
    time.sleep(0.02)
"""

# A job of two workers ({name} for str.format); what follows it describes the worker
# container: its command first. tests/test_local_zygote.py runs one too.
JOB_HEAD = """\
apiVersion: rpcjob.dev/v1alpha1
kind: RpcJob
metadata:
  name: {name}
spec:
  roles:
    worker:
      replicas: 2
      template:
        spec:
          containers:
            - name: worker
              image: python:3.11
"""
JOB_YAML = (
    JOB_HEAD
    + """\
              command: ["python3", "member.py"]
              env:
                - {{name: SCALE_MODE, value: rpcjob}}
                - {{name: SCALE_OUT, value: "{out}"}}
      maxReplicas: {size}
"""
)

PHASES = ["created", "started", "imports", "sidecar", "rank", "setup", "join", "reach"]


def _records(out: Path) -> dict[str, dict[str, Any]]:
    recs = {}
    for p in out.glob("*.json"):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        recs[rec["name"]] = rec
    return recs


def _wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s: {what}")


def _reached(out: Path, n: int) -> dict[str, dict[str, Any]] | None:
    recs = _records(out)
    done = {k: r for k, r in recs.items() if str(n) in r["reach"]}
    return done if len(done) >= n else None


def rpcjob_scale(
    size: int, workdir: Path, fork_server: bool = True
) -> tuple[float, dict[str, list[float]], str]:
    """Seconds from the scale request until all ``size`` members reached each other, the
    per-phase durations of the new pods, and the slowest new pod's critical path. With
    ``fork_server`` (rpcjob run's default) the workers are forked from its fork server."""
    from rpcjob_operator.localexec import control

    name = f"scalebench{os.getpid()}"
    out = workdir / "out"
    out.mkdir(parents=True)
    (workdir / "member.py").write_text(MEMBER)
    (workdir / "job.yaml").write_text(JOB_YAML.format(name=name, size=size, out=out))
    (out / "target").write_text("2")
    created: dict[str, float] = {}
    tail: list[str] = []  # rpcjob run's last events and pod log lines, shown when it fails
    errlog = (workdir / "run.err").open("w")
    flag = "--fork-server" if fork_server else "--no-fork-server"
    argv, fds = lifeline.wrap(
        [sys.executable, "-m", "rpcjob_operator.cli", "run", str(workdir / "job.yaml"), "--json",
         flag]
    )  # fmt: skip
    run = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=errlog, text=True, start_new_session=True,
        pass_fds=fds,
    )  # fmt: skip

    def reached(n: int) -> dict[str, dict[str, Any]] | None:
        if run.poll() is not None:  # fail fast, with rpcjob run's own words
            raise RuntimeError(f"rpcjob run exited with {run.returncode}: "
                               + (workdir / "run.err").read_text()[-3000:])  # fmt: skip
        return _reached(out, n)

    def read_events() -> None:
        assert run.stdout is not None
        for line in run.stdout:
            tail[:] = [*tail[-40:], line.rstrip()[:300]]
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") == "pod" and ev.get("action") == "created":
                created[ev["slot"]] = time.time()

    threading.Thread(target=read_events, daemon=True).start()
    try:
        _wait(lambda: reached(2), 600, "the first 2 members")
        time.sleep(2.0)  # let the first members settle (their sidecars, metrics threads)
        (out / "target").write_text(str(size))
        t0 = time.time()
        control.scale(name, {"worker": size})
        done = _wait(lambda: reached(size), 900, f"all {size} members to reach each other")
    except BaseException:  # SIGTERM (from `timeout`) included: say where it stood
        print(f"rpcjob run's last output ({len(_records(out))} members had recorded):",
              *tail, "rpcjob run's stderr:", (workdir / "run.err").read_text()[-3000:],
              sep="\n", flush=True)  # fmt: skip
        raise
    finally:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: drain
        try:
            run.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        errlog.close()
    total = max(r["reach"][str(size)] for r in done.values()) - t0
    phases, slowest = split_phases(
        t0, done, size, {s: {"created": c} for s, c in created.items() if c >= t0}
    )
    return total, phases, slowest


def split_phases(
    t0: float,
    done: dict[str, dict[str, Any]],
    size: int,
    stamps: dict[str, dict[str, float]],
    phases: list[str] = PHASES,
) -> tuple[dict[str, list[float]], str]:
    """Per-phase seconds of the new members (those in ``stamps``, which adds the times a member
    cannot take itself, e.g. "created") from ``t0``, the scale request, and the slowest new
    member's critical path. bench/cluster_scale_bench.py uses it too."""
    out: dict[str, list[float]] = {p: [] for p in phases}
    slowest, slowest_end = "", 0.0
    for slot, r in done.items():
        if slot not in stamps:
            continue  # one of the first members
        t = dict(r["t"], **stamps[slot], reach=r["reach"][str(size)])
        prev = t0
        path = []
        for p in phases:
            out[p].append(t[p] - prev)
            path.append(f"{p} {t[p] - prev:.2f}")
            prev = t[p]
        if t["reach"] > slowest_end:
            slowest, slowest_end = f"{slot}: " + ", ".join(path), t["reach"]
    return out, slowest


def phase_summary(all_phases: dict[str, list[float]]) -> dict[str, float]:
    """Print each phase's median / max over the new members; the medians."""
    print("phases of the new pods (seconds: median / max):")
    med = {}
    for p, v in all_phases.items():
        med[p] = round(statistics.median(v), 3)
        print(f"  {p:<9} {statistics.median(v):6.2f} / {max(v):6.2f}")
    return med


def anchor(size: int, workdir: Path) -> float:
    """Seconds from starting ``size`` plain torch processes until all reached each other."""
    import torch.distributed as dist

    out = workdir / "anchor"
    out.mkdir(parents=True)
    (out / "target").write_text(str(size))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    master = dist.TCPStore(
        "127.0.0.1", port, is_master=True, wait_for_workers=False,
        timeout=datetime.timedelta(seconds=300),
    )  # fmt: skip
    env = dict(os.environ, SCALE_MODE="plain", SCALE_OUT=str(out))
    t0 = time.time()
    # rank 0 of torch's tcp:// handler would start its own server: members use 1..N
    procs = []
    for i in range(1, size + 1):
        argv, fds = lifeline.wrap([sys.executable, "-c", MEMBER, f"w_{i}", str(i), str(port)])
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, pass_fds=fds,
                                      start_new_session=True))  # fmt: skip
    try:
        done = _wait(lambda: _reached(out, size), 900, f"{size} plain torch members")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        del master
    return max(r["reach"][str(size)] for r in done.values()) - t0


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-fork-server", dest="fork_server", action="store_false",
                    help="start every worker cold (rpcjob run --no-fork-server)")  # fmt: skip
    args = ap.parse_args()
    # `timeout` sends SIGTERM: exit through the finally blocks that kill our child processes
    # (orphaned torch workers with default options would busy-poll the machine's cores)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"start: {_load()}", flush=True)
    ours, anchors, all_phases = [], [], {p: [] for p in PHASES}
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="scb-") as tmp:
            a = anchor(args.size, Path(tmp))
            anchors.append(a)
            print(f"[{r}] anchor: {args.size} plain torch processes, start -> all reached: "
                  f"{a:6.2f} s", flush=True)  # fmt: skip
            s, phases, slowest = rpcjob_scale(args.size, Path(tmp), args.fork_server)
            ours.append(s)
            for p, v in phases.items():
                all_phases[p] += v
            mode = "fork server" if args.fork_server else "cold starts"
            print(f"[{r}] rpcjob run ({mode}): scale 2 -> {args.size}, request -> all reached: "
                  f"{s:6.2f} s   ({s / a:.2f}x the anchor)", flush=True)  # fmt: skip
            print(f"[{r}] slowest new pod: {slowest}", flush=True)
    total, base = statistics.median(ours), statistics.median(anchors)
    med = phase_summary(all_phases)
    print(f"scale 2 -> {args.size}: {total:.2f} s, anchor {base:.2f} s, ratio "
          f"{total / base:.2f}x (targets: <= 1.2x on 2 cores, <= 3 s on 16 cores)")  # fmt: skip
    print(f"end: {_load()}", flush=True)
    print(json.dumps({
        "scale_2_16_s": round(total, 3),
        "anchor_s": round(base, 3),
        "scale_vs_anchor": round(total / base, 3),
        "fork_server": args.fork_server,
        "phases_s": med,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
