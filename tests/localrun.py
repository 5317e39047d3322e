"""Drive ``rpcjob run --json`` as a user would: a real process, its JSON events, its exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# as tests.etcd_waits: e2e/tests imports this module as tests.localrun
from tests.etcd_waits import wait_until

REPO = Path(__file__).resolve().parent.parent
Event = dict[str, Any]


def rpcjob(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpcjob_operator.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False,
    )  # fmt: skip


class LocalRun:
    """``rpcjob run --json JOB`` in the background, with its events collected as they come."""

    def __init__(self, job: str, *args: str, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rpcjob_operator.cli", "run", "--json", job, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
        )  # fmt: skip
        self.events: list[Event] = []
        self.raw: list[str] = []
        self.ended = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def wait_event(
        self, pred: Callable[[Event], bool], timeout: float, what: str, since: int = 0
    ) -> Event:
        """The first event (from index ``since`` of ``events`` on) that matches ``pred``."""
        deadline = time.monotonic() + timeout
        i = since
        with self._cond:
            while True:
                while i < len(self.events):
                    if pred(self.events[i]):
                        return self.events[i]
                    i += 1
                if self.ended:
                    raise AssertionError(f"rpcjob run exited before {what}:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; output:\n{self.tail()}")
                self._cond.wait(left)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rpcjob run did not end in {timeout}s:\n{self.tail()}") from None
        self._reader.join(5)
        return code

    def members(self) -> int:
        """How many members the latest status reports."""
        with self._cond:
            for ev in reversed(self.events):
                if ev.get("type") == "status":
                    return len(ev["status"].get("members") or [])
        return 0

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def sigkill_and_wait_gone(
        self, job_uid: str, helper: Callable[[], list[int]], what: str
    ) -> None:
        """SIGKILL ``rpcjob run`` (it cannot drain), then wait until the job's processes and
        ``what`` (the pids ``helper`` finds) are gone: the lifeline launcher ties each to it."""
        self.proc.kill()
        self.proc.wait(30)
        wait_until(
            lambda: not processes_with_env("RPCJOB_JOB_UID", job_uid),
            60,
            "the job's processes to die with rpcjob run",
        )
        wait_until(lambda: not helper(), 60, f"{what} to die")

    def kill(self) -> None:
        """Teardown: Ctrl-C first (rpcjob run then stops its pods), SIGKILL as a last resort."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, n: int = 60) -> str:
        return "".join(self.raw[-n:])

    def logs(self, slot: str) -> list[str]:
        return [e["line"] for e in self.events if e.get("type") == "log" and e["slot"] == slot]

    def story(self, n: int = 300) -> str:
        """The last ``n`` lines but the status snapshots (each is huge): logs, pods, events."""

        def status(line: str) -> bool:
            try:
                return bool(json.loads(line).get("type") == "status")
            except (ValueError, AttributeError):
                return False

        return "".join([line for line in self.raw if not status(line)][-n:])


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids whose environment has key=value (how a test finds a job's local containers)."""
    needle = f"{key}={value}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line holds ``text`` (a run's etcd and fork server name its root)."""
    return [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if text in cmdline(p)]


def worker_pid(pod: str, job_uid: str) -> int:
    """The worker (not the sidecar) process of a local pod of one job run (tests running in
    parallel may run jobs of the same name)."""
    mine = set(processes_with_env("RPCJOB_JOB_UID", job_uid))
    pids = [
        p
        for p in processes_with_env("RPCJOB_POD_NAME", pod)
        if p in mine and "rpcjob-sidecar" not in cmdline(p)
    ]
    if len(pids) != 1:
        raise AssertionError(f"expected one worker process for {pod}, found {pids}")
    return pids[0]


def base_env(tmp: Path, extra: dict[str, str] | None = None,
             drop: Sequence[str] = ()) -> dict[str, str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["RPCJOB_STATE_DIR"] = str(tmp / "state")
    env["TMPDIR"] = str(tmp / "tmp")
    (tmp / "tmp").mkdir(exist_ok=True)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env
