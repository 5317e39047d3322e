"""Test kit (no tests here): real torch workers in podkit pods, and group-wide assertions.

A pod is podkit's real ``rpcjob-sidecar`` process plus the scriptable child of test_worker_kit
in mode ``rpcjob`` (it joins through ``rpcjob.init_rpc()``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

from podkit import Job, Pod, wait_for
from test_worker_kit import Proc, child_script

from rpcjob.etcd import Client

JOIN_TIMEOUT = 240.0  # 2 cores shared by many processes: generous, never a fixed sleep


class Worker:
    def __init__(self, pod: Pod, proc: Proc) -> None:
        self.pod, self.proc = pod, proc
        self.name = pod.name
        self.rank = -1
        self.join_s = -1.0

    def joined(self, timeout: float = JOIN_TIMEOUT) -> Worker:
        line = self.proc.expect("JOINED", "JOINFAIL", timeout=timeout)
        assert line.startswith("JOINED"), (
            f"{self.name}: {line}\nsidecar log:\n{self.pod.sidecar_log.read_text()[-3000:]}"
        )
        _, name, rank, secs = line.split()
        assert name == self.name
        self.rank, self.join_s = int(rank), float(secs)
        return self

    @property
    def alive(self) -> bool:
        return self.proc.p.poll() is None

    def view(self) -> list[tuple[str, int]]:
        line = self.proc.ask("members", "MEMBERS", timeout=60)
        return [(n, int(r)) for n, r in json.loads(line.split(" ", 1)[1])]

    def ping(self, peers: Sequence[str]) -> list[str]:
        line = self.proc.ask("ping " + " ".join(peers), "PING", timeout=120)
        return list(json.loads(line.split(" ", 1)[1]))

    def autograd_id(self) -> int:
        """The dist-autograd worker id in this process's context ids (torch: ``id >> 48``)."""
        return int(self.proc.ask("autograd", "AUTOGRAD", timeout=60).split()[1])

    def leave(self) -> None:
        assert self.proc.ask("leave", "LEFT", timeout=120) == "LEFT"
        assert self.proc.p.wait(timeout=60) == 0

    def kill(self) -> None:
        self.proc.kill()


def start_worker(pod: Pod, env: Mapping[str, str] | None = None) -> Worker:
    """The pod's torch worker, forked from the torch-preloaded server (tests/forked.py)."""
    popen = pod.start_forked_worker(child_script(), ["rpcjob"], env)
    return Worker(pod, Proc(popen))  # Popen's calls that Proc makes


def start_pods(job: Job, indexes: Sequence[int], **env: str) -> list[Worker]:
    """Start pods at once (concurrent joins); returns their workers once all joined."""
    pods = [job.pod("worker", i, start=False) for i in indexes]
    for p in pods:
        p.start_sidecar(wait=False)
    for p in pods:
        wait_for(lambda p=p: p._sidecar_up(), 120, f"sidecar {p.name}")
    workers = [start_worker(p, env) for p in pods]
    return [w.joined() for w in workers]


def etcd_members(client: Client, job: Job) -> list[tuple[str, int]]:
    out = []
    for kv in client.get_prefix(job.keys.members):
        rec = json.loads(kv.value)
        out.append((kv.key.decode().rsplit("/", 1)[1], int(rec["rank"])))
    return sorted(out)


def assert_consistent(
    client: Client, job: Job, workers: Sequence[Worker], timeout: float = 60.0
) -> list[tuple[str, int]]:
    """Every live member's view equals the etcd membership, and RPCs work between all."""
    live = [w for w in workers if w.alive]
    expected = sorted((w.name, w.rank) for w in live)

    def settled() -> bool:
        if etcd_members(client, job) != expected:
            return False
        return all(w.view() == expected for w in live)

    try:
        wait_for(settled, timeout, "views == etcd membership", interval=0.2)
    except TimeoutError:
        views = {w.name: w.view() for w in live}
        raise AssertionError(
            f"expected {expected}; etcd {etcd_members(client, job)}; views {views}"
        ) from None
    names = [w.name for w in live]
    for w in live:
        assert w.ping([n for n in names if n != w.name]) == [], w.name
    return expected


def elapsed(since: float) -> float:
    return time.monotonic() - since
