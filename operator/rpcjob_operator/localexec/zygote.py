"""The fork server of ``rpcjob run``: one process that has imported torch, torch.distributed.rpc
and rpcjob's worker modules, and forks a pod's worker container from there instead of starting
a cold interpreter (``zygote_client.py`` is the other end; docs/local.md, "Fork server").

    python -m rpcjob_operator.localexec.zygote SOCKET [PADDING]

It prints one JSON line on stdout (``{"ready": ...}`` or ``{"error": ...}``), then serves
``SOCKET`` (a ``SOCK_SEQPACKET`` unix socket in the run's private directory; peers of another
uid are refused). Each connection is one container: a JSON request (the ``Program`` of
``zygote_plan.py``, env, cwd) with the container's stdin, stdout, stderr and lifeline descriptors
(SCM_RIGHTS); the answer is ``pid N`` and, when the child ends, ``exit STATUS`` (a raw wait
status). Fork is only safe from a single-threaded process without CUDA: the server checks both
before it serves and refuses to start otherwise.

The child becomes what a cold start would have been: its own session and process group, the
container's descriptors, environment, working directory, argv (``sys.argv``, ``sys.orig_argv``,
``/proc/<pid>/cmdline``, ``/proc/<pid>/environ`` and ``comm``, rewritten in place like
``setproctitle`` does, into areas the server's padding made large enough), the lifeline watcher
of ``lifeline.py``, and Python's exit: uncaught exceptions print without the server's frames,
exit codes and death by signal (SIGINT after KeyboardInterrupt) as a cold interpreter reports
them, atexit handlers and non-daemon threads as usual. It dies with the server (PDEATHSIG).
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import ctypes
import importlib
import importlib.machinery
import io
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import types
from typing import Any

from rpcjob_operator.localexec import lifeline

PRELOAD = ("torch", "torch.distributed.rpc", "rpcjob", "rpcjob.worker.api",
           "rpcjob.worker.client", "rpcjob.store", "rpcjob.devices.agent")  # fmt: skip
PAD_ENV = "RPCJOB_FORK_SERVER_PAD"  # makes /proc/<pid>/environ room for a container's env
# Set by the client when it started the server with OPENBLAS_NUM_THREADS=1: OpenBLAS (numpy's,
# imported by torch where numpy is installed) starts its thread pool at load, and fork is only
# safe from a single thread. Each child then gets the pool a cold start would have had.
BLAS_ENV = "RPCJOB_FORK_SERVER_BLAS"
_BLAS_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
                 "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")  # fmt: skip
PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15
_LIBC = ctypes.CDLL(None, use_errno=True)
_SIGINT_AT_EXIT = False


def _areas() -> tuple[int, int, int, int]:
    """arg_start, arg_end, env_start, env_end of this process (proc(5), /proc/pid/stat)."""
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    if len(fields) < 49:
        raise RuntimeError("this kernel's /proc/self/stat has no argument and environment areas")
    return int(fields[45]), int(fields[46]), int(fields[47]), int(fields[48])


def _preflight() -> dict[str, Any]:
    """Import the preload set; the facts the client needs, or why this server cannot fork."""
    for name in PRELOAD:
        importlib.import_module(name)
    torch = sys.modules["torch"]
    if torch.cuda.is_initialized():
        return {"error": "CUDA was initialised by the imports (a forked child could not use it)"}
    tasks = os.listdir("/proc/self/task")
    if len(tasks) != 1:
        names = []
        for t in tasks:
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
        return {"error": f"the imports started {len(tasks) - 1} thread(s) {names}: fork is "
                         "not safe"}  # fmt: skip
    a0, a1, e0, e1 = _areas()
    return {"ready": True, "pid": os.getpid(), "executable": sys.executable,
            "argv_capacity": a1 - a0, "env_capacity": e1 - e0}  # fmt: skip


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def serve(srv: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Fork a child per request on the listening ``srv`` until killed; returns only in a
    child, with its request and descriptors (stdin, stdout, stderr, lifeline), every other
    descriptor of the server closed."""
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    while True:
        ready, _, _ = select.select([srv.fileno(), *children], [], [])
        for fd in ready:
            if fd == srv.fileno():
                got = _accept(srv, children)
                if got is not None:
                    return got
                continue
            pid, conn = children.pop(fd)
            _, status = os.waitpid(pid, 0)
            os.close(fd)
            with contextlib.suppress(OSError):  # the client is gone: nobody asks any more
                conn.send(f"exit {status}".encode())
            conn.close()


def _accept(
    srv: socket.socket, children: dict[int, tuple[int, socket.socket]]
) -> tuple[dict[str, Any], list[int]] | None:
    conn, _ = srv.accept()
    fds: list[int] = []
    try:
        if _peer_uid(conn) != os.getuid():
            raise PermissionError("peer of another user")
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 4)
        req = json.loads(msg)
        if len(fds) != 4:
            raise ValueError(f"expected 4 descriptors, got {len(fds)}")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = _fork()
    except (OSError, ValueError) as exc:
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            conn.send(f"error {type(exc).__name__}: {exc}".encode())
        conn.close()
        return None
    if pid == 0:
        srv.close()
        conn.close()
        for pidfd, (_, other) in children.items():
            os.close(pidfd)
            other.close()
        return req, fds
    for fd in fds:
        os.close(fd)
    children[os.pidfd_open(pid)] = (pid, conn)
    conn.send(f"pid {pid}".encode())
    return None


def _fork() -> int:
    """fork(); the child is in its own session and dies with the server before the parent
    answers with its pid (a signal to the pid's process group must reach it at once)."""
    server = os.getpid()
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:
        os.setsid()  # its own session and process group, as start_new_session=True gives
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != server:
            os._exit(137)  # the server died before prctl: nobody would report this child
        os.close(r)
        os.write(w, b"1")
        os.close(w)
        return 0
    os.close(w)
    os.read(r, 1)  # b"" if the child died first: its exit status follows
    os.close(r)
    return pid


def _rewrite(start: int, end: int, strings: list[str]) -> None:
    """Put ``strings`` (NUL-terminated, NUL-padded) into this process's memory [start, end):
    what /proc/<pid>/cmdline or /proc/<pid>/environ shows."""
    data = b"".join(os.fsencode(s) + b"\0" for s in strings)[: end - start]
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)


def _stdio(unbuffered: bool) -> None:
    """sys.stdin/stdout/stderr as a cold interpreter creates them for its descriptors."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        write = fd > 0
        buffered = not (unbuffered and write)
        buf: Any = open(fd, "wb" if write else "rb", -1 if buffered else 0, closefd=False)  # noqa: SIM115
        raw = buf.raw if buffered else buf
        raw.name = f"<{name}>"
        line = buffered and (raw.isatty() or fd == 2)
        stream: Any = io.TextIOWrapper(buf, old.encoding, old.errors, "\n", line, not buffered)
        stream.mode = "w" if write else "r"
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def become(req: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: take the container's identity before its program runs."""
    stdin, stdout, stderr, life = fds
    lifeline.start_watcher(life)  # dies with rpcjob run, even when it is SIGKILLed
    for i, fd in enumerate((stdin, stdout, stderr)):
        os.dup2(fd, i)
    for fd in {stdin, stdout, stderr} - {0, 1, 2}:
        os.close(fd)
    os.environ.clear()  # unsetenv: the C environment no longer points into the old area
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    a0, a1, e0, e1 = _areas()
    _rewrite(a0, a1, req["cmdline"])
    _rewrite(e0, e1, [f"{k}={v}" for k, v in req["env"].items()])
    _LIBC.prctl(PR_SET_NAME, os.fsencode(req["comm"])[:15])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _stdio(req["unbuffered"])
    sys.orig_argv = list(req["cmdline"])
    if req["blas"]:
        _blas_threads(req["env"])
    if "numpy.random" in sys.modules:  # seeded from entropy at import: reseed, as if imported now
        sys.modules["numpy.random"].seed()
    # (Python's own random reseeds after fork; torch's generator still holds its default seed)


def _blas_threads(env: dict[str, str]) -> None:
    """Give OpenBLAS the thread count a cold start with ``env`` would have (its variables in
    order, else the CPUs this process may use), where the server ran it with one."""
    want = len(os.sched_getaffinity(0))
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        if env.get(name, "").strip().isdigit() and int(env[name]) > 0:
            want = int(env[name])
            break
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "openblas" in os.path.basename(path).lower() and ".so" in path:
                libs.add(path)
    for path in sorted(libs):
        lib = ctypes.CDLL(path)
        for name in _BLAS_SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(want))
                break


def _sigint_at_exit() -> None:
    if _SIGINT_AT_EXIT:  # how a cold interpreter ends after an uncaught KeyboardInterrupt
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def run(req: dict[str, Any]) -> int:
    """Run the program in a fresh ``__main__``; the exit code, or SystemExit propagates."""
    global _SIGINT_AT_EXIT
    atexit.register(_sigint_at_exit)  # registered first: runs after the program's own
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    kind, target, args = req["kind"], req["target"], list(req["args"])
    try:
        if kind == "module":
            sys.argv = ["-m", *args]  # runpy puts the module's file in argv[0], as -m does
            sys.path[0] = os.getcwd()
            runpy._run_module_as_main(target)  # type: ignore[attr-defined]  # what -m calls
        elif kind == "code":
            sys.argv = ["-c", *args]
            sys.path[0] = ""
            exec(compile(target, "<string>", "exec"), main.__dict__)
        else:
            sys.argv = [target, *args]
            sys.path[0] = os.path.dirname(os.path.realpath(target))
            path = os.path.abspath(target)  # __main__.__file__ is absolute since Python 3.9
            main.__file__ = path
            main.__cached__ = None  # type: ignore[attr-defined]
            main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
            with open(path, "rb") as f:
                code = compile(f.read(), path, "exec")
            exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # the server's frames: a cold start has none
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)  # it prints __traceback__
        _SIGINT_AT_EXIT = isinstance(exc, KeyboardInterrupt)
        return 1
    return 0


def main() -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        facts = _preflight()
        srv.bind(sys.argv[1])
        srv.listen(128)  # before "ready": the client connects as soon as it reads it
    except Exception as exc:  # torch missing, a broken install: rpcjob run starts cold
        facts = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(facts), flush=True)
    if "error" in facts:
        sys.exit(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # the client read its line; a child's stdout is its own
    os.close(devnull)
    blas = os.environ.get(BLAS_ENV) == "1"
    req, fds = serve(srv)
    req["blas"] = blas
    become(req, fds)
    sys.exit(run(req))


if __name__ == "__main__":
    main()
