"""The operator's impure helpers against the real parts: kube.py against a real API server (this
process's private cluster, e2e/backends/private.py: status codes -> outcomes, error messages),
members.py against a real etcd, and the pure merge-patch / endpoint helpers (table-driven)."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import kopf
import pytest
from kubernetes import client
from operator_kit import free_port, job_manifest, unique

from e2e.cluster import build
from e2e.cluster.cluster import unavailable
from rpcjob import contract
from rpcjob.etcd import Client, EtcdError
from rpcjob_operator.finalizer import skip_requested
from rpcjob_operator.kube import ApiRefused, Conflict, Kube, merge_patch
from rpcjob_operator.members import EtcdPool, job_endpoints


def kube_for(url: str) -> Kube:
    cfg = client.Configuration()
    cfg.host = url
    return Kube(cfg, threads=2)


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"r": {"w": {"x": 1, "y": 2}}}, {"r": {"w": {"x": 1}}}, {"r": {"w": {"y": None}}}),
        ({"l": [1, 2]}, {"l": [2]}, {"l": [2]}),
        ({}, {"s": {"t": 1}}, {"s": {"t": 1}}),
        ({"s": 1}, {"s": {"t": 1}}, {"s": {"t": 1}}),
    ],
)
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert merge_patch(old, new) == patch


@pytest.mark.parametrize(
    ("spec", "default", "want"),
    [
        ({}, ["d:1"], ("d:1",)),
        ({"etcd": {"endpoints": ["e:1", "e:2"]}}, ["d:1"], ("e:1", "e:2")),
        ({"etcd": {"endpoints": []}}, ["d:1"], ("d:1",)),
        ({"etcd": {"endpoints": [3]}}, ["d:1"], ("d:1",)),  # unparseable spec: the default
        ({"etcd": "x"}, [], ()),
    ],
)
def test_job_endpoints(spec: dict[str, Any], default: list[str], want: tuple[str, ...]) -> None:
    assert job_endpoints({"spec": spec}, default) == want


@pytest.mark.parametrize(
    ("value", "skip"), [("true", True), ("1", True), ("no", False), ("", False)]
)
def test_skip_annotation(value: str, skip: bool) -> None:
    obj = {"metadata": {"annotations": {contract.ANNOTATION_SKIP_ETCD_CLEANUP: value}}}
    assert skip_requested(obj) is skip


@pytest.mark.slow  # a private control plane
def test_kube_outcomes_against_the_api_server() -> None:
    from kubernetes import config

    from e2e.backends import private

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = private.get()
    cfg = client.Configuration()
    config.load_kube_config(config_file=cluster.kubeconfig, client_configuration=cfg)
    name = unique("kube")

    async def scenario() -> None:
        kube = Kube(cfg, threads=2)
        try:
            assert await kube.get_job("default", "missing") is None
            _, job = await kube.request(
                "POST",
                f"/apis/{contract.GROUP}/{contract.VERSION}/namespaces/default/{contract.PLURAL}",
                body=job_manifest(name),
            )
            rv = job["metadata"]["resourceVersion"]
            done = await kube.patch_job_status("default", name, rv, {"state": "Pending"})
            assert done["status"]["state"] == "Pending"
            with pytest.raises(Conflict, match="409"):  # the same (now stale) resourceVersion
                await kube.patch_job_status("default", name, rv, {"state": "Running"})
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"{name}-p", "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            }
            assert await kube.create(pod) is True
            assert await kube.create(pod) is False  # 409 AlreadyExists: a previous cycle
            assert await kube.delete_pod("default", f"{name}-p", "not-its-uid", 0) is False
            assert len(await kube.list_pods("default", {"nope": "x"})) == 0
            with pytest.raises(ApiRefused, match="422") as e:
                await kube.create({**pod, "metadata": {"name": "Bad_Name", "namespace": "default"}})
            assert "POST /api/v1/namespaces/default/pods" in str(e.value)
        finally:
            kube.close()

    try:
        asyncio.run(scenario())
    finally:  # the pod never runs (no such image) but the cluster serves later tests
        kubectl = [str(build.binary("kubectl")), "--kubeconfig", cluster.kubeconfig]
        subprocess.run([*kubectl, "delete", "pod", f"{name}-p", "--grace-period=0", "--force",
                        "--ignore-not-found"], capture_output=True, timeout=120)  # fmt: skip
        subprocess.run([*kubectl, "delete", contract.PLURAL, name, "--ignore-not-found"],
                       capture_output=True, timeout=120)  # fmt: skip


def test_kube_unreachable_is_temporary() -> None:
    port = free_port()  # reserved: nothing listens here, and nobody else will

    async def scenario() -> None:
        kube = kube_for(f"http://127.0.0.1:{port}")
        kube.timeout = 2
        try:
            with pytest.raises(kopf.TemporaryError, match="no connection"):
                await kube.get_job("default", "x")
        finally:
            kube.close()

    asyncio.run(scenario())


def test_members_read_and_prefix_delete(etcd_endpoint: str) -> None:
    name = unique("mem")
    keys = contract.JobKeys("default", name, "uid-1")
    with Client(etcd_endpoint) as c:
        c.put(keys.member("worker_0"), '{"rank": 3, "pod": "p0", "node": "n", "devices": [0]}')
        c.put(keys.member("worker_1"), "not json")
        c.put(keys.store + "x", "y")

    async def scenario() -> None:
        pool = EtcdPool({})
        try:
            members = await pool.read_members([etcd_endpoint], keys)
            assert [(m.name, m.rank, m.pod, m.devices) for m in members] == [
                ("worker_0", 3, "p0", ("cuda:0",))
            ]  # the broken record is skipped (logged), the others still count
            assert (
                await pool.delete_prefix([etcd_endpoint], contract.job_prefix("default", name)) == 3
            )
            assert await pool.read_members([etcd_endpoint], keys) == ()
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_members_unreachable_raises_etcd_error() -> None:
    port = free_port()  # reserved: nothing listens here, and nobody else will

    async def scenario() -> None:
        pool = EtcdPool({})
        try:
            with pytest.raises(EtcdError, match=f"127.0.0.1:{port}"):
                await pool.read_members([f"127.0.0.1:{port}"], contract.JobKeys("a", "b", "c"))
        finally:
            await pool.close()

    asyncio.run(scenario())
