"""The local API server decodes client-go's protobuf request bodies for the kinds typed clients
send (helm's release Secret, `kubectl create namespace|secret|configmap|serviceaccount`), and
answers other protobuf bodies with 415 and the fix."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from e2e.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")


def ok(cluster: LocalCluster, *args: str) -> str:
    r = cluster.kubectl(*args)
    assert r.returncode == 0, f"kubectl {' '.join(args)} failed: {r.stderr}"
    return r.stdout


@pytest.fixture
def cluster(local_cluster_factory) -> LocalCluster:  # type: ignore[no-untyped-def]
    return local_cluster_factory(kubelet=False, crds=None)


def get(cluster: LocalCluster, plural: str, ns: str | None, name: str) -> dict:  # type: ignore[type-arg]
    rt = cluster.store.registry.get("", "v1", plural)
    assert rt is not None
    return cluster.store.get(rt, ns, name)


def test_kubectl_create_sends_protobuf_and_is_understood(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    assert ok(cluster, "create", "namespace", "pb").strip() == "namespace/pb created"
    ns = get(cluster, "namespaces", None, "pb")
    assert ns["metadata"]["uid"] and ns["metadata"]["creationTimestamp"]
    assert "generateName" not in ns["metadata"]  # zero values are omitted, as in JSON

    (tmp_path / "k").write_bytes(b"v\x00x\xff")  # bytes, not text
    ok(cluster, "-n", "pb", "create", "secret", "generic", "s1", f"--from-file={tmp_path / 'k'}",
       "--type=example.dev/t")  # fmt: skip
    secret = get(cluster, "secrets", "pb", "s1")
    assert base64.b64decode(secret["data"]["k"]) == b"v\x00x\xff"
    assert secret["type"] == "example.dev/t"

    ok(cluster, "-n", "pb", "create", "configmap", "c1", "--from-literal=a=1")
    assert get(cluster, "configmaps", "pb", "c1")["data"] == {"a": "1"}
    ok(cluster, "-n", "pb", "create", "serviceaccount", "sa1")
    assert get(cluster, "serviceaccounts", "pb", "sa1")["metadata"]["namespace"] == "pb"
    assert "deleted" in ok(cluster, "-n", "pb", "delete", "secret", "s1")


def test_protobuf_body_of_an_undecoded_kind_is_415_with_the_fix(cluster: LocalCluster) -> None:
    ok(cluster, "create", "namespace", "pb")
    r = cluster.kubectl("-n", "pb", "create", "deployment", "d1", "--image=busybox")
    assert r.returncode == 1
    assert "the local API server decodes protobuf only for ConfigMap, DeleteOptions" in r.stderr
    assert "got apps/v1/Deployment: send it as JSON" in r.stderr


def test_kubectl_auth_can_i_sends_a_protobuf_review_which_is_answered(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2e.localcluster import protobuf

    decoded: list[dict] = []  # type: ignore[type-arg]
    real = protobuf.decode
    monkeypatch.setattr(protobuf, "decode", lambda raw: decoded.append(real(raw)) or decoded[-1])
    assert ok(cluster, "auth", "can-i", "delete", "pods/web-0", "-n", "team",
              "--subresource=log").strip() == "yes"  # fmt: skip
    assert ok(cluster, "auth", "can-i", "get", "/healthz").strip() == "yes"
    kinds = [d["kind"] for d in decoded]
    assert kinds == ["SelfSubjectAccessReview", "SelfSubjectAccessReview"]
    assert decoded[0]["spec"]["resourceAttributes"] == {
        "namespace": "team", "verb": "delete", "resource": "pods", "subresource": "log",
        "name": "web-0",
    }  # fmt: skip
    assert decoded[1]["spec"]["nonResourceAttributes"] == {"path": "/healthz", "verb": "get"}
