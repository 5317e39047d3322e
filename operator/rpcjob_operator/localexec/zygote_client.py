"""``rpcjob run``'s end of the fork server (``zygote.py``): start it on first use, ask it to fork
a worker container, and watch that child like ``subprocess.Popen`` would.

``ForkServer.spawn`` returns ``None`` whenever the container must start cold (the command is not
the server's Python, the server failed to start or died, ...); the reason is reported once
through ``warn``. docs/local.md, "Fork server", says what users see.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rpcjob_operator.localexec import lifeline
from rpcjob_operator.localexec.containers import ProcessSpec, base_environment
from rpcjob_operator.localexec.zygote import BLAS_ENV, PAD_ENV
from rpcjob_operator.localexec.zygote_plan import Program, ZygoteInfo, plan

START_TIMEOUT = 180.0  # torch's import on a loaded 2-core machine took up to ~55 s
REPLY_TIMEOUT = 120.0
ARGV_PAD = 16 * 1024  # room in /proc/<pid>/cmdline for a container's command line
ENV_PAD = 64 * 1024  # ...and in /proc/<pid>/environ for its environment


class ForkedProcess:
    """A child of the fork server, seen like a ``subprocess.Popen`` (pid, poll, wait,
    returncode: negative for a death by signal)."""

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn

    def _collect(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return
        try:
            data = self._conn.recv(256)
        except OSError:
            data = b""  # as a closed connection: the server is gone
        self._conn.close()
        if data.startswith(b"exit "):
            self.returncode = os.waitstatus_to_exitcode(int(data.split()[1]))
            return
        # The server died: its PDEATHSIG kills the child; report that once it is gone.
        deadline = time.monotonic() + 5.0
        while lifeline.alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.returncode = -signal.SIGKILL

    def poll(self) -> int | None:
        self._collect(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._collect(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        return self.returncode


def _shebang(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    return head.split(b"\n", 1)[0].decode(errors="replace") if head.startswith(b"#!") else None


class ForkServer:
    """One fork server per ``rpcjob run``, started when the first worker container asks."""

    def __init__(
        self, root: str, warn: Callable[[str], None], env: Mapping[str, str] | None = None
    ) -> None:
        self.root = root
        self.warn = warn
        self.sock = os.path.join(root, "fs.sock")
        self.log = os.path.join(root, "fork-server.log")
        # What it starts with: the containers' base environment (containers.base_environment)
        self.env = dict(base_environment() if env is None else env)
        self.info: ZygoteInfo | None = None
        self.failed: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._warned: set[str] = set()

    # --- the decision ------------------------------------------------------------------------
    def _note(self, reason: str) -> None:
        with self._lock:
            if reason in self._warned:
                return
            self._warned.add(reason)
        self.warn(f"worker containers start cold, not from the fork server: {reason} "
                  "(rpcjob run --no-fork-server turns it off)")  # fmt: skip

    def program(self, spec: ProcessSpec, info: ZygoteInfo) -> Program | str:
        path = spec.env.get("PATH")
        resolved = shutil.which(spec.argv[0], path=path) if spec.argv else None
        if resolved is not None:
            resolved = os.path.abspath(resolved)
        shebang = None if resolved == info.executable else _shebang(resolved)
        got = plan(spec.argv, spec.env, info, resolved=resolved, shebang=shebang,
                   which=lambda name: shutil.which(name, path=path))  # fmt: skip
        if (
            isinstance(got, Program)
            and got.kind == "script"
            and not os.path.isfile(os.path.join(spec.cwd, got.target))
        ):
            return f"its script {got.target!r} is not a file"  # a cold start says why
        return got

    # --- the server ----------------------------------------------------------------------------
    def _start(self) -> None:
        os.makedirs(os.path.join(self.root, "fork-server"), exist_ok=True)
        env = {**self.env, PAD_ENV: "x" * ENV_PAD}
        if "OPENBLAS_NUM_THREADS" not in env:  # one thread in the server; children get theirs
            env.update({"OPENBLAS_NUM_THREADS": "1", BLAS_ENV: "1"})
        mod = "rpcjob_operator.localexec.zygote"
        argv, fds = lifeline.wrap([sys.executable, "-m", mod, self.sock, "-" * ARGV_PAD])
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                argv, env=env, cwd=os.path.join(self.root, "fork-server"),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True, pass_fds=fds,
            )  # fmt: skip
        threading.Thread(target=self._read_ready, name="fork-server", daemon=True).start()

    def _read_ready(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        self._proc.stdout.close()
        try:
            facts: dict[str, Any] = json.loads(line)
        except ValueError:
            facts = {"error": f"it exited with {self._proc.wait()}: {self._log_tail()}"}
        if facts.get("ready"):
            self.info = ZygoteInfo(
                executable=str(facts["executable"]), env=self.env,
                argv_capacity=int(facts["argv_capacity"]), env_capacity=int(facts["env_capacity"]),
            )  # fmt: skip
        else:
            self.failed = f"the fork server did not start ({facts.get('error')})"
        self._ready.set()

    def _log_tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                lines = f.read()[-2000:].decode(errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        return lines[-1] if lines else "no output"

    def _ensure_ready(self) -> ZygoteInfo | None:
        with self._lock:
            if self._proc is None and self.failed is None:
                self._start()
        if not self._ready.wait(START_TIMEOUT) and self.failed is None:
            self.failed = f"the fork server did not start within {START_TIMEOUT:.0f} s"
            self.close()
        if self.failed is None and self._proc is not None and self._proc.poll() is not None:
            self.failed = f"the fork server exited ({self._proc.returncode}): {self._log_tail()}"
        return None if self.failed is not None else self.info

    # --- one container ---------------------------------------------------------------------------
    def spawn(self, spec: ProcessSpec, log_fd: int) -> ForkedProcess | None:
        """The container's process forked by the server, or None: start it cold."""
        provisional = ZygoteInfo(executable=sys.executable, env=self.env)
        got = self.program(spec, provisional)
        if isinstance(got, str) or not os.path.isdir(spec.cwd):
            if isinstance(got, str):
                self._note(got)
            return None
        info = self._ensure_ready()
        if info is None:
            self._note(self.failed or "the fork server is not running")
            return None
        got = self.program(spec, info)
        if isinstance(got, str):
            self._note(got)
            return None
        try:
            return self._request(got, spec, log_fd)
        except (OSError, ValueError) as exc:
            self._note(f"the fork server did not fork it ({type(exc).__name__}: {exc})")
            return None

    def _request(self, prog: Program, spec: ProcessSpec, log_fd: int) -> ForkedProcess:
        req: Mapping[str, Any] = {
            "kind": prog.kind, "target": prog.target, "args": list(prog.args),
            "unbuffered": prog.unbuffered, "cmdline": list(prog.cmdline), "comm": prog.comm,
            "env": spec.env, "cwd": spec.cwd,
        }  # fmt: skip
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            conn.settimeout(REPLY_TIMEOUT)
            conn.connect(self.sock)
            socket.send_fds(conn, [json.dumps(req).encode()], [devnull, log_fd, log_fd,
                                                               lifeline.read_end()])  # fmt: skip
            reply = conn.recv(256).decode()
        except BaseException:
            conn.close()
            raise
        finally:
            os.close(devnull)
        if not reply.startswith("pid "):
            conn.close()
            raise ValueError(reply or "the fork server closed the connection")
        conn.settimeout(None)
        return ForkedProcess(int(reply.split()[1]), conn)

    def close(self) -> None:
        """Stop the server (its children, if any are left, die with it: PDEATHSIG)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.sock)
