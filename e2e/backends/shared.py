"""One real cluster with the chart installed, shared by every pytest process of a session.

Starting the control plane, two nodes and ``helm install --wait`` costs 30-90 s on a 2-core
machine, so a session pays it once however many xdist workers it has:

* The session's controller (the only process without xdist's ``workerinput``) makes a run
  directory and exports it with its own pid (``RPCJOB_E2E_RUN_DIR``, ``RPCJOB_E2E_OWNER``);
  xdist workers inherit both.
* The first process that needs the cluster takes ``<run dir>/<name>.lock`` and starts a server
  process (``python -m e2e.backends.shared serve``) in its own session; the server starts the
  cluster, writes ``<name>.json`` (kubeconfig, etcd endpoint, log paths) and runs until told to
  stop. Later processes find the state file under the same lock and attach.
* The server, not a worker, owns every process (control plane, kubelets and their pods, the
  jobs' etcd): a worker that finishes early does not take the cluster away from the other one.
* Teardown: the controller's ``pytest_sessionfinish`` stops the server and waits for its
  cleanup (``stop_all``). If pytest is killed instead, the server sees the owner pid gone within
  a second and cleans up the same way; every component also dies with the server itself
  (``PR_SET_PDEATHSIG``), so even a SIGKILLed server leaves no process behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .base import REPO

ENV_RUN_DIR = "RPCJOB_E2E_RUN_DIR"
ENV_OWNER = "RPCJOB_E2E_OWNER"
START_TIMEOUT = 600.0  # a cold start on a busy 2-core machine, helm --wait included
STOP_TIMEOUT = 120.0


class SharedClusterError(RuntimeError):
    """The shared cluster could not be started (the server's log tail says why)."""


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat): tells a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def begin_session() -> Path:
    """Called by the session's controller: name the run dir (made on first use) and export it
    and the owner (this process) to the workers."""
    pid = os.getpid()
    path = Path("/var/tmp") / f"rpcjob-e2e-run-{pid}-{uuid.uuid4().hex[:8]}"
    os.environ[ENV_RUN_DIR] = str(path)
    os.environ[ENV_OWNER] = f"{pid}:{_start_time(pid)}"
    return path


def run_dir() -> Path:
    """This session's run dir; a process started outside pytest gets its own."""
    path = Path(os.environ.get(ENV_RUN_DIR) or begin_session())
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _owner_alive(owner: str) -> bool:
    pid, _, started = owner.partition(":")
    return _start_time(int(pid)) == started


@contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SharedClusterError(f"{path} stayed locked for {timeout:.0f}s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def attach(name: str) -> dict[str, Any]:
    """The state of the shared cluster ``name`` (see SERVERS), started if nobody did yet."""
    directory = run_dir()
    state_file, log = directory / f"{name}.json", directory / f"{name}.log"
    with _locked(directory / f"{name}.lock", START_TIMEOUT + 60):
        if state_file.exists():
            state = dict(json.loads(state_file.read_text()))
            if state.get("error"):
                raise SharedClusterError(state["error"])
            if _alive(int(state["pid"])):
                return state
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path[1:]])}
        env.setdefault(ENV_OWNER, f"{os.getpid()}:{_start_time(os.getpid())}")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "e2e.backends.shared", "serve", str(directory), name],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO),
                env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not state_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                error = f"the shared e2e cluster {name!r} did not start (log {log}):\n{tail}"
                state_file.write_text(json.dumps({"error": error}))
                raise SharedClusterError(error)
            time.sleep(0.2)
        state = dict(json.loads(state_file.read_text()))
        if state.get("error"):
            raise SharedClusterError(state["error"])
        return state


def stop_all(directory: Path | None = None) -> None:
    """Stop every shared cluster of the run dir and remove it (the controller, at the end)."""
    path = directory or (Path(os.environ[ENV_RUN_DIR]) if os.environ.get(ENV_RUN_DIR) else None)
    if path is None or not path.is_dir():
        return
    pids = []
    for state_file in path.glob("*.json"):
        try:
            pid = json.loads(state_file.read_text()).get("pid")
        except (OSError, json.JSONDecodeError):
            continue
        if pid and _alive(int(pid)):
            os.kill(int(pid), signal.SIGTERM)
            pids.append(int(pid))
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.rmtree(path, ignore_errors=True)


# --- the server process ------------------------------------------------------------------------
def _chart_server(directory: Path) -> tuple[dict[str, Any], Callable[[], None]]:
    from .cluster import ClusterBackend

    backend = ClusterBackend(directory / "chart").start()
    return backend.state(), backend.stop


SERVERS: dict[str, Callable[[Path], tuple[dict[str, Any], Callable[[], None]]]] = {
    "chart": _chart_server,
}


def serve(directory: Path, name: str) -> int:
    owner = os.environ.get(ENV_OWNER, "")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    (directory / name).mkdir(exist_ok=True)
    t0 = time.monotonic()
    state, teardown = SERVERS[name](directory)
    try:
        state = {**state, "pid": os.getpid(), "started_in": round(time.monotonic() - t0, 1)}
        tmp = directory / f"{name}.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.rename(directory / f"{name}.json")
        print(f"ready in {state['started_in']}s: {json.dumps(state)}", flush=True)
        while not stop.wait(0.5):
            if owner and not _owner_alive(owner):
                print("the session's owner process is gone: stopping", flush=True)
                break
    finally:
        teardown()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        sys.exit("usage: python -m e2e.backends.shared serve RUN_DIR NAME")
    sys.exit(serve(Path(sys.argv[2]), sys.argv[3]))
