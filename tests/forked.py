"""Torch worker processes forked from a server that has already imported torch.

A fresh interpreter spends several CPU seconds importing torch before it does anything, and the
suite starts about a hundred torch workers on 2 shared cores. multiprocessing's forkserver
imports torch once per test process (``PRELOAD``) and forks every worker from it, so a worker
starts in a fraction of that. The server imports torch and nothing else: no gRPC, no thread
pool, no CUDA, so forking it is safe; everything else (rpcjob, the etcd client, TensorPipe,
CUDA) starts in the worker itself, as in a pod.

:class:`ForkedPopen` runs a script the way ``subprocess.Popen([python, script, *args])`` does
for the kits: its own session, the given environment, stdin and stdout/stderr on pipes, exit
code (negative for a signal) on ``wait()``, excepthook, then non-daemon threads, then atexit
handlers at exit. A worker dies with the test process that started it (its parent sentinel).
"""

from __future__ import annotations

import atexit
import io
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from multiprocessing import reduction
from typing import Any

PRELOAD = ["torch", "torch.distributed.rpc"]
CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(PRELOAD)


def die_with_parent() -> None:
    """A worker must not outlive its test process (a pytest-timeout kill included): the
    parent's sentinel becomes readable when it exits, however it exits."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


class _Fd:
    """A file descriptor handed to the forked child (duplicated through the forkserver)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Fd._rebuild, (reduction.DupFd(self.fd),))

    @staticmethod
    def _rebuild(dup: Any) -> int:
        return int(dup.detach())


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def _run_script(
    script: str, args: Sequence[str], env: Mapping[str, str], stdin: int, stdout: int
) -> None:
    """In the forked child: become ``python script *args`` and exit as that would."""
    os.setsid()
    for std in (sys.stdout, sys.stderr):
        std.flush()
    os.dup2(stdin, 0)
    os.dup2(stdout, 1)
    os.dup2(stdout, 2)
    os.close(stdin)
    os.close(stdout)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (fd 0, for the life of the process)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [script, *args]
    die_with_parent()
    code = 0
    try:
        with open(script) as f:
            source = f.read()
        exec(compile(source, script, "exec"), {"__name__": "__main__", "__file__": script})
    except SystemExit as e:
        code = _exit_code(e)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    # what the interpreter does at exit: wait for non-daemon threads, then atexit handlers
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for std in (sys.stdout, sys.stderr):
        std.flush()
    os._exit(code)


class ForkedPopen:
    """The part of ``subprocess.Popen`` (text mode, stdin and stdout on pipes, stderr on
    stdout, a new session) that the kits use, for ``python script *args`` forked from the
    torch-preloaded server."""

    def __init__(self, script: str, args: Sequence[str], env: Mapping[str, str]) -> None:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        self.args = [sys.executable, script, *args]
        self._proc = CTX.Process(
            target=_run_script,
            args=(script, list(args), dict(env), _Fd(in_r), _Fd(out_w)),
            daemon=False,
        )
        try:
            self._proc.start()
        finally:
            os.close(in_r)
            os.close(out_w)
        self.stdin: io.TextIOWrapper = open(in_w, "w")  # noqa: SIM115 (owned by this object)
        self.stdout: io.TextIOWrapper = open(out_r)  # noqa: SIM115
        self.pid: int = self._proc.pid  # type: ignore[assignment]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(9)

    def terminate(self) -> None:
        self.send_signal(15)


def stay_and_leave(
    script: str, stays: Sequence[str], leaves: Sequence[str], timeout: float = 180
) -> tuple[dict[str, Any], str]:
    """Two torch processes of one dynamic group: ``python script *stays`` (rank 0: it keeps
    the TCPStore, so it must outlive the other) and ``python script *leaves``, which leaves
    first. Both must exit 0; the stayer's result (its last output line that is a JSON object,
    written in one write) and its whole output."""
    stayer = ForkedPopen(script, stays, dict(os.environ))
    leaver = ForkedPopen(script, leaves, dict(os.environ))
    try:
        assert leaver.wait(timeout) == 0, leaver.stdout.read()
        code = stayer.wait(timeout)
        out = stayer.stdout.read()
    finally:
        stayer.kill()
        leaver.kill()
    assert code == 0, out
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1]), out
