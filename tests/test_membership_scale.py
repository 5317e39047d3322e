"""Live membership: form 4, scale to 8 with live joins, down to 2 with graceful leaves.

Real etcd, real rpcjob-sidecar processes, real torch workers (podkit pods on 127.0.0.N).
"""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest
from podkit import Job, wait_for
from test_membership_kit import assert_consistent, start_pods

from rpcjob.etcd import Client
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd


def leases(etcd: EmbeddedEtcd) -> list[str]:
    """The ids of every lease etcd holds: etcd's own LeaseLeases call through its JSON gateway
    (no etcdctl: Debian's etcd-server does not ship it and rpcjob.etcd does not wrap the call)."""
    req = urllib.request.Request(
        f"http://{etcd.endpoint}/v3/lease/leases", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return [str(lease["ID"]) for lease in json.load(r).get("leases") or []]


@pytest.mark.slow
def test_form_4_scale_to_8_down_to_2_no_leaks(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    job = Job(etcd.endpoint, tmp_path, lease_ttl=3)
    client = Client(etcd.endpoint)
    try:
        workers = start_pods(job, range(4), KIT_METRICS_S="0.5")
        assert_consistent(client, job, workers)
        # the worker reports its agent's metrics; the sidecar exports them
        wait_for(
            lambda: (
                'rpcjob_agent_metric{name="agent.thread_pool_size"}'
                in workers[0].pod.http("/metrics")[1]
            ),
            60,
            "agent metrics on /metrics",
        )
        workers += start_pods(job, range(4, 8))  # four live joins at once
        assert len(assert_consistent(client, job, workers)) == 8

        # graceful leaves: two through rpcjob.shutdown(), one through the sidecar's DRAIN (pod
        # deletion reaches the sidecar first), three through SIGTERM to the worker
        for w in workers[5:7]:
            w.leave()
        drained = workers[7]
        assert drained.pod.stop_sidecar() == 0
        drained.proc.expect("DRAINING", timeout=120)
        assert drained.proc.p.wait(timeout=120) == 0
        for w in workers[2:5]:
            w.proc.p.send_signal(signal.SIGTERM)
        for w in workers[2:5]:
            w.proc.expect("DRAINING", timeout=120)  # the on_drain callback ran
            assert w.proc.p.wait(timeout=120) == 0
        assert len(assert_consistent(client, job, workers)) == 2

        # the group ends: no member, rank, marker or torch registration key, and no lease
        for w in workers[:2]:
            w.leave()
        for p in job.pods:
            if p is not drained.pod:
                assert p.stop_sidecar() == 0, p.sidecar_log.read_text()[-2000:]
        keys = sorted(kv.key.decode() for kv in client.get_prefix(job.keys.root))
        leaked = [
            k for k in keys
            if not k.startswith(job.keys.retired_ranks)
            and not k.startswith(job.keys.store)
        ]  # fmt: skip
        assert leaked == []
        torch_regs = [k for k in keys if "/names/" in k and not k.endswith("_ALL_WORKER_INFOS")]
        assert torch_regs + [k for k in keys if "/addrs/" in k] == []
        infos = client.get(job.keys.store + "rpc_prefix_0/names/_ALL_WORKER_INFOS")
        assert infos is not None and infos.value == b""
        wait_for(lambda: leases(etcd) == [], 30, "no leases left")
    finally:
        job.close()
        client.close()
