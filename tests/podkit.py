"""Test kit (no tests here): start "pods" on one machine, each a real ``rpcjob-sidecar`` process
plus a worker process on its own loopback IP (127.0.0.N), against a real etcd.

Used by tests/test_sidecar_*.py, tests/test_membership_*.py and bench/membership_bench.py::

    job = Job(etcd.endpoint, tmp_path, lease_ttl=3)
    pod = job.pod("worker", 0)              # sidecar started, socket ready
    w = pod.fake_worker()                   # a protocol peer: Hello, Session, JOINED
    w.wait_for(lambda ev: ev["kind"] == "SNAPSHOT")
    pod.kill_sidecar(); pod.stop()          # SIGKILL / SIGTERM + wait

``FakeWorker`` is a real process speaking the sidecar's gRPC protocol (tests/fake_worker.py):
it records every MembershipEvent as a JSON line and obeys stdin commands (join, leave, ...).
Any other worker command (e.g. a torch worker) can be started with :meth:`Pod.start_worker`.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from forked import ForkedPopen

from rpcjob import contract as c
from rpcjob_operator.localexec import lifeline, ports

HERE = Path(__file__).resolve().parent
FAKE_WORKER = HERE / "fake_worker.py"
# Spread over 127.0.0.0/8 so that concurrent test runs rarely share an address.
_ips = itertools.count(int.from_bytes(os.urandom(2), "big") % 200 * 256 + 2)


def next_ip() -> str:
    n = next(_ips)
    return f"127.0.{(n // 250) % 250 + 1}.{n % 250 + 2}"


def free_port(host: str) -> int:
    """A port reserved for this test process without races (localexec/ports.py)."""
    return ports.reserve_port(host)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns a truthy value (returned) or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class Job:
    def __init__(
        self,
        etcd_endpoint: str,
        workdir: Path,
        *,
        name: str = "job",
        namespace: str = "default",
        slots: Mapping[str, int] | None = None,
        lease_ttl: int = 3,
        rank_space: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint = etcd_endpoint
        self.workdir = Path(workdir)
        self.name, self.namespace = name, namespace
        self.uid = uuid.uuid4().hex[:12]
        self.slots = dict(slots or {"worker": 64})
        self.lease_ttl = lease_ttl
        self.rank_space = rank_space
        self.env = dict(env or {})
        self.pods: list[Pod] = []

    @property
    def keys(self) -> c.JobKeys:
        return c.JobKeys(self.namespace, self.name, self.uid)

    def pod_env(self, role: str, index: int, ip: str, sock: str, http: str) -> dict[str, str]:
        env = {
            c.ENV_NAMESPACE: self.namespace,
            c.ENV_JOB_NAME: self.name,
            c.ENV_JOB_UID: self.uid,
            c.ENV_ROLE: role,
            c.ENV_INDEX: str(index),
            c.ENV_WORKER_NAME: c.worker_name(role, index),
            c.ENV_POD_NAME: c.pod_name(self.name, role, index),
            c.ENV_POD_IP: ip,
            c.ENV_NODE_NAME: "local",
            c.ENV_SOCKET: sock,
            c.ENV_ETCD_ENDPOINTS: self.endpoint,
            c.ENV_SLOTS: json.dumps(self.slots),
            c.ENV_LEASE_TTL: str(self.lease_ttl),
            c.ENV_HTTP_ADDR: http,
            c.ENV_NODE_LABELS: "{}",
            c.ENV_RPC_TIMEOUT: "20",
            # 2 shared cores, many workers: few RPC threads (bench's torch anchor uses 4 too)
            c.ENV_RPC_THREADS: "4",
            c.ENV_DRAIN_GRACE: "20",
        }
        if self.rank_space is not None:
            env[c.ENV_RANK_SPACE] = str(self.rank_space)
        env.update(self.env)
        return env

    def pod(self, role: str = "worker", index: int = 0, *, start: bool = True, **env: str) -> Pod:
        p = Pod(self, role, index, env)
        self.pods.append(p)
        if start:
            p.start_sidecar()
        return p

    def close(self) -> None:
        for p in self.pods:
            p.kill_all()
            ports.release_port(p.http_port)  # one lock fd per port: give them back


class Pod:
    def __init__(self, job: Job, role: str, index: int, extra_env: Mapping[str, str]) -> None:
        self.job, self.role, self.index = job, role, index
        self.name = c.worker_name(role, index)
        self.ip = next_ip()
        self.dir = job.workdir / f"{self.name}-{self.ip}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "sock" / c.SOCKET_FILE)
        self.http_port = free_port(self.ip)
        self.env = job.pod_env(role, index, self.ip, self.socket, f"{self.ip}:{self.http_port}")
        self.env.update(extra_env)
        self.sidecar: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._n = 0

    # --- sidecar ------------------------------------------------------------------------------
    @property
    def sidecar_log(self) -> Path:
        return self.dir / "sidecar.log"

    def start_sidecar(self, wait: bool = True) -> subprocess.Popen[bytes]:
        env = dict(os.environ, **self.env)
        # Through the lifeline launcher: a test worker killed by a timeout leaves no pod behind
        # to load the machine for the tests after it.
        argv, fds = lifeline.wrap([sys.executable, "-m", "rpcjob.sidecar.main"])
        with open(self.sidecar_log, "ab") as log:
            self.sidecar = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                pass_fds=fds,
            )  # fmt: skip
        if wait:
            wait_for(lambda: self._sidecar_up(), 60, f"sidecar {self.name} to listen")
        return self.sidecar

    def _sidecar_up(self) -> bool:
        assert self.sidecar is not None
        if self.sidecar.poll() is not None:
            raise RuntimeError(
                f"sidecar {self.name} exited with {self.sidecar.returncode}: "
                f"{self.sidecar_log.read_text()[-3000:]}"
            )
        return self.http("/healthz")[0] == 200 and os.path.exists(self.socket)

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.ip}:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def kill_sidecar(self) -> None:
        if self.sidecar is not None and self.sidecar.poll() is None:
            self.sidecar.kill()
            self.sidecar.wait()

    def stop_sidecar(self, timeout: float = 60) -> int:
        """SIGTERM (drain) and wait for the exit code."""
        assert self.sidecar is not None
        self.sidecar.send_signal(signal.SIGTERM)
        return self.sidecar.wait(timeout)

    # --- workers ------------------------------------------------------------------------------
    def start_worker(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any
    ) -> subprocess.Popen[bytes]:
        self._n += 1
        full = dict(os.environ, **self.env, **(env or {}))
        log = open(self.dir / f"worker-{self._n}.log", "ab")  # noqa: SIM115 (owned by Popen)
        popen.setdefault("stdout", log)
        popen.setdefault("stderr", log)
        cmd, fds = lifeline.wrap(list(argv))
        p = subprocess.Popen(cmd, env=full, start_new_session=True, pass_fds=fds, **popen)
        self.workers.append(p)
        return p

    def start_forked_worker(
        self, script: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ForkedPopen:
        """``python script *args`` in the pod, forked from the torch-preloaded server
        (tests/forked.py): a torch worker without a torch import of its own."""
        full = dict(os.environ, **self.env, **(env or {}))
        p = ForkedPopen(script, args, full)
        self.workers.append(p)
        return p

    def fake_worker(self, *, join: bool = True, **env: str) -> FakeWorker:
        self._n += 1
        events = self.dir / f"fake-{self._n}.jsonl"
        p = self.start_worker(
            [sys.executable, str(FAKE_WORKER), str(events), "join" if join else "hello"],
            env, stdin=subprocess.PIPE,
        )  # fmt: skip
        return FakeWorker(p, events)

    def kill_all(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        self.kill_sidecar()


class FakeWorker:
    """Handle on a tests/fake_worker.py process."""

    def __init__(self, proc: subprocess.Popen[bytes], events: Path) -> None:
        self.proc, self.path = proc, events

    def events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30, what: str = ""
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            if self.proc.poll() is not None and not any(pred(e) for e in self.events()):
                raise RuntimeError(f"fake worker exited ({self.proc.returncode}): {self.events()}")
            return next((e for e in self.events() if pred(e)), None)

        return wait_for(find, timeout, what or "a fake worker event")  # type: ignore[no-any-return]

    def identity(self, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(lambda e: e["kind"] == "IDENTITY", timeout, "Hello's identity")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
