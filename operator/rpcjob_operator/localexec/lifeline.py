"""Processes that die with the process that started them, even when it is SIGKILLed.

``rpcjob run`` (and the test cluster's process kubelet) start every container, and the embedded
etcd, through :func:`wrap`: ``python -S lifeline.py FD -- CMD...``. That launcher forks a
*watcher*, then execs CMD in place, so the container keeps its own pid, environment and exit
code. The watcher (re-executed with an empty environment, so that nothing mistakes it for the
container) shares the container's process group and blocks reading FD, the read end of a pipe
whose write end only the starting process holds. The read returns EOF when that process is
gone, however it ended (SIGKILL and OOM kills included: the kernel closes its descriptors),
and the watcher then SIGKILLs the container and its process group. The watcher also watches
the container (a pidfd) and exits with it, so it never outlives what it guards. It is started
through a middle process that exits at once, so it is no child of the container: the
container's own children are exactly the ones it started.

Graceful stops (Ctrl-C, SIGTERM, pod deletion) do not involve it: they stop the containers
first, and the watchers go with them (docs/architecture.md, Local mode).

This file runs as a script (no package imports): the launcher must start fast.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading

_LOCK = threading.Lock()
_PIPE: tuple[int, int] | None = None  # (read end, write end), created on first use


def _forget_in_child() -> None:
    # A fork of the starting process must not keep the write end open (the containers would
    # then outlive the starter), nor reuse the parent's pipe.
    global _PIPE
    if _PIPE is not None:
        for fd in _PIPE:
            with contextlib.suppress(OSError):
                os.close(fd)
        _PIPE = None


os.register_at_fork(after_in_child=_forget_in_child)


def read_end() -> int:
    """The read end of this process's lifeline pipe (what a watcher blocks on)."""
    global _PIPE
    with _LOCK:
        if _PIPE is None:
            _PIPE = os.pipe()  # both ends close-on-exec: no other child inherits them
        return _PIPE[0]


def wrap(argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
    """The argv that runs ``argv`` tied to this process, and the descriptor to pass to it
    (``subprocess.Popen(cmd, pass_fds=fds, start_new_session=True)``)."""
    fd = read_end()
    return [sys.executable, "-S", os.path.abspath(__file__), str(fd), "--", *argv], (fd,)


def alive(pid: int) -> bool:
    """Whether a process of that pid exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def watch(fd: int, guarded: int) -> None:
    """Until ``guarded`` exits: on EOF on ``fd``, SIGKILL ``guarded`` and this process group."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a group-wide SIGTERM is the container's to handle
    try:  # readable when the container exits (Linux >= 5.3); else poll for it
        exited: int | None = os.pidfd_open(guarded)
    except (AttributeError, OSError):
        exited = None
    while True:
        watched = [fd] if exited is None else [fd, exited]
        ready, _, _ = select.select(watched, [], [], 1.0 if exited is None else None)
        if (exited in ready) or (exited is None and not alive(guarded)):
            return  # the container is gone: so are we
        if fd in ready and not os.read(fd, 64):
            break  # EOF: the starting process is gone
    with contextlib.suppress(OSError):
        os.kill(guarded, signal.SIGKILL)  # the container, wherever its group is
    os.killpg(0, signal.SIGKILL)  # then its group, and us


def start_watcher(fd: int) -> None:
    """Start the watcher of this process (a grandchild, so not a child of the container) on
    ``fd``, then close ``fd``. The fork server's children call it too (``zygote.py``)."""
    me = os.getpid()
    middle = os.fork()
    if middle == 0:
        try:
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for std in (0, 1, 2):
                    os.dup2(devnull, std)  # do not hold the container's log or pipes open
                os.set_inheritable(fd, True)
                exe, script = sys.executable, os.path.abspath(__file__)
                os.execve(exe, [exe, "-S", script, "--watch", str(fd), str(me)], {})
        finally:
            os._exit(0)  # the middle process (or a watcher that could not exec)
    os.waitpid(middle, 0)  # reaped: the container starts with no child of ours
    os.close(fd)


def launch(fd: int, argv: list[str]) -> None:
    """Start the watcher, then become ``argv``."""
    start_watcher(fd)
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        print(f"cannot run {argv[0]!r}: {err}", file=sys.stderr, flush=True)
        os._exit(127)


def main(args: list[str]) -> None:
    if args[:1] == ["--watch"] and len(args) == 3:
        watch(int(args[1]), int(args[2]))
        return
    if len(args) >= 3 and args[1] == "--":
        launch(int(args[0]), args[2:])
    print("usage: lifeline.py FD -- CMD [ARGS...]", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
