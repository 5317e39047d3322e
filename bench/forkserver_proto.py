"""Prototype, not shipped: what would a torch-preloaded fork server save a scale-up?

The largest phase of a scale-up (bench/scale_bench.py) is each new worker's ``import torch``.
This compares, for N members started at once that import torch + rpcjob's worker modules, join
a torch dynamic RPC group (TCPStore, TensorPipe over TCP as rpcjob's default) and ping every
other member:

* cold: N ``python3 member.py`` processes (what a pod's container command does today);
* fork: N thin launchers (``python3 -S``, what the container command would become) that ask a
  zygote, started earlier with the imports done, to fork the member for them.

The zygote is single-threaded (checked: it refuses to serve if its imports started a thread),
forks from its main loop, and relays what the container runtime relies on: the launcher passes
its stdin/stdout/stderr, argv, environment and working directory; the zygote sends back the
child's pid and, later, its exit status, which the launcher exits with; the launcher forwards
SIGTERM/SIGINT to the child; when the launcher's connection closes first (SIGKILLed launcher),
the zygote SIGKILLs the child. Each child reseeds Python's and torch's RNGs (a fork copies them).

    python3 bench/forkserver_proto.py [--size 14]

Ends with one JSON line: {"cold_s": {...}, "fork_s": {...}, "zygote_start_s": s, ...}.
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
import time
from pathlib import Path
from typing import Any

from rpcjob_operator.localexec import lifeline  # children die with the bench, even on SIGKILL

IMPORTS = "import torch, torch.distributed.rpc, rpcjob, rpcjob.worker.api, rpcjob.store\n"

ZYGOTE = (
    IMPORTS
    + r"""
import array, json, os, random, runpy, select, signal, socket, sys, traceback
tasks = os.listdir("/proc/self/task")
if len(tasks) != 1:
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
    sys.exit(f"zygote: the imports started {len(tasks) - 1} thread(s) {names}: fork is not safe")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(128)
print("READY", flush=True)
conns = {}   # connection fd -> (socket, child pid or None, pidfd)
def child(conn, req, fds):
    srv.close()
    for c, _, pfd in conns.values():
        c.close(); os.close(pfd)
    # stays in the zygote's process group: the prototype's lifeline (the zygote's) covers it
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
        os.close(fd)
    conn.close()
    os.environ.clear(); os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.argv = req["argv"]
    random.seed(); torch.seed()  # a fork copies the zygote's RNG state
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        runpy.run_path(req["argv"][0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc(); code = 1
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)
while True:
    watched = [srv] + [c for c, _, _ in conns.values()] + [p for _, _, p in conns.values()]
    for r in select.select(watched, [], [])[0]:
        if r is srv:
            conn, _ = srv.accept()
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            pid = os.fork()
            if pid == 0:
                child(conn, json.loads(msg), fds)
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())
            conns[conn.fileno()] = (conn, pid, os.pidfd_open(pid))
            continue
        for key, (conn, pid, pfd) in list(conns.items()):
            if r == pfd:  # the child exited: relay its status
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall(f"{code}\n".encode())
                except OSError:
                    pass
            elif r is conn and not conn.recv(1):  # the launcher is gone: so is its child
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            else:
                continue
            conn.close(); os.close(pfd); del conns[key]
"""
)

# The container command with a fork server: connect, hand over stdio/argv/env/cwd, relay.
LAUNCHER = r"""
import json, os, signal, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
req = {"argv": sys.argv[2:], "env": dict(os.environ), "cwd": os.getcwd()}
socket.send_fds(s, [json.dumps(req).encode()], [0, 1, 2])
f = s.makefile()
pid = int(f.readline())
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda n, _: os.kill(pid, n))
line = f.readline()
sys.exit(int(line) if line else 1)
"""

# The member, identical in both modes (in a forked child its imports are already loaded).
MEMBER = (
    r"""
import json, os, sys, time
T = {"python": time.time()}
"""
    + IMPORTS
    + r"""
import torch.distributed.rpc as rpc
T["imports"] = time.time()
name, rank, port, out, size = sys.argv[1:6]
rank, size = int(rank), int(size)
opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}", num_worker_threads=4,
                                       _transports=["uv"], _channels=["cma", "basic"])
rpc.init_rpc(name, rank=rank, world_size=None, rpc_backend_options=opts)
T["join"] = time.time()
from rpcjob.devices.agent import current_members
while len(current_members()) < size:
    time.sleep(0.01)
for peer, _ in current_members():
    rpc.rpc_sync(peer, torch.add, args=(torch.ones(1), 1), timeout=60)
T["reach"] = time.time()
st = open("/proc/self/smaps_rollup").read().split()
private = ("Private_Clean:", "Private_Dirty:")
T["private_mib"] = sum(int(st[i + 1]) for i, w in enumerate(st) if w in private) / 1024
with open(f"{out}/{name}.json", "w") as f:
    json.dump(T, f)
while not os.path.exists(f"{out}/done"):
    time.sleep(0.05)
rpc.shutdown(graceful=False)
"""
)


def _popen(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    cmd, fds = lifeline.wrap(argv)
    return subprocess.Popen(cmd, pass_fds=fds, start_new_session=True, **kw)


def _group(size: int, work: Path, mode: str, sock: str) -> dict[str, float]:
    """Start ``size`` members at once (cold or through the zygote) and time their phases."""
    import torch.distributed as dist

    out = work / mode
    out.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    master = dist.TCPStore(  # type: ignore[attr-defined]
        "127.0.0.1", port, is_master=True, wait_for_workers=False,
        timeout=datetime.timedelta(seconds=300),
    )  # fmt: skip
    head = [sys.executable, str(work / "member.py")]
    if mode == "fork":
        head = [sys.executable, "-S", str(work / "launcher.py"), sock, str(work / "member.py")]
    t0 = time.time()
    procs = []
    for i in range(1, size + 1):  # stderr to a file: torch's shutdown warnings, tracebacks
        with open(out / f"m{i}.err", "wb") as err:
            procs.append(_popen([*head, f"m{i}", str(i), str(port), str(out), str(size)],
                                cwd=work, stderr=err))  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(list(out.glob("m*.json"))) < size:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                errs = "".join(p.read_text()[-800:] for p in sorted(out.glob("*.err")))
                raise RuntimeError(f"{mode}: members failed or timed out; stderr:\n{errs}")
            time.sleep(0.05)
        recs = [json.loads(p.read_text()) for p in out.glob("m*.json")]
        (out / "done").write_text("")
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        del master
    imports = [r["imports"] - t0 for r in recs]
    return {
        "imports_median": statistics.median(imports),
        "imports_max": max(imports),
        "all_reached": max(r["reach"] for r in recs) - t0,
        "private_mib": statistics.median(r["private_mib"] for r in recs),
        "exit_codes_ok": float(all(p.returncode == 0 for p in procs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=14, help="members started at once")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    one, five, _ = os.getloadavg()
    print(f"start: load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="fsp-") as tmp:
        work = Path(tmp)
        for name, src in (("member.py", MEMBER), ("launcher.py", LAUNCHER)):
            (work / name).write_text(src)
        sock = str(work / "zygote.sock")
        t0 = time.time()
        # OpenBLAS (numpy, where installed) starts its thread pool at import; one thread keeps
        # the zygote single-threaded (the forked members then run BLAS on one thread too)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        zygote = _popen([sys.executable, "-c", ZYGOTE, sock], stdout=subprocess.PIPE, env=env)
        try:
            assert zygote.stdout is not None
            if zygote.stdout.readline().strip() != b"READY":
                raise RuntimeError(f"zygote did not start (exit {zygote.wait()})")
            zstart = time.time() - t0
            print(f"zygote ready in {zstart:.2f} s (imports done, 1 thread)", flush=True)
            cold = _group(args.size, work, "cold", sock)
            fork = _group(args.size, work, "fork", sock)
        finally:
            zygote.kill()
            zygote.wait()
    for mode, r in (("cold", cold), ("fork", fork)):
        print(f"{mode}: {args.size} members, imports done {r['imports_median']:.2f} s median / "
              f"{r['imports_max']:.2f} s max, all joined and reached each other "
              f"{r['all_reached']:.2f} s, private memory {r['private_mib']:.0f} MiB per member, "
              f"exit codes {'all 0' if r['exit_codes_ok'] else 'NOT all 0'}")  # fmt: skip
    print(json.dumps({
        "size": args.size,
        "zygote_start_s": round(zstart, 3),
        "cold_s": {k: round(v, 3) for k, v in cold.items()},
        "fork_s": {k: round(v, 3) for k, v in fork.items()},
        "saved_s": round(cold["all_reached"] - fork["all_reached"], 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
