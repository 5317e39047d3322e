"""The real kubectl (offline) against the emulated API server: apply, get with printer
columns, scale, delete, logs; and the audit log of the requests it made."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from e2e.localcluster.cluster import REPO_ROOT, LocalCluster
from e2e.localcluster.samples import widget, widget_crd

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")


def write(tmp_path: Path, name: str, *docs: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def ok(cluster: LocalCluster, *args: str) -> str:
    r = cluster.kubectl(*args)
    assert r.returncode == 0, f"kubectl {' '.join(args)} failed: {r.stderr}"
    return r.stdout


def test_apply_get_scale_delete_a_custom_resource(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    assert "created" in ok(local_cluster, "apply", "-f", write(tmp_path, "crd.yaml", widget_crd()))
    w = widget("w1", 2)
    assert (
        ok(local_cluster, "apply", "-f", write(tmp_path, "w.yaml", w)).strip()
        == "widget.example.dev/w1 created"
    )
    local_cluster.kubectl(
        "patch",
        "wd",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"replicas":2,"conditions":[{"type":"Ready","reason":"AllGood"}]}}',
    )
    table = ok(local_cluster, "get", "wd").splitlines()
    assert table[0].split() == ["NAME", "DESIRED", "READY", "STATE", "AGE"]
    assert table[1].split()[:4] == ["w1", "2", "2", "AllGood"]
    # Client-side apply: a changed file becomes a 3-way merge patch (last-applied annotation).
    w["spec"]["replicas"] = 3
    assert "configured" in ok(local_cluster, "apply", "-f", write(tmp_path, "w.yaml", w))
    got = yaml.safe_load(ok(local_cluster, "get", "wd", "w1", "-o", "yaml"))
    assert got["spec"]["replicas"] == 3
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]
    assert (
        ok(local_cluster, "scale", "wd/w1", "--replicas=5").strip()
        == "widget.example.dev/w1 scaled"
    )
    assert ok(local_cluster, "get", "wd", "w1", "-o", "jsonpath={.spec.replicas}") == "5"
    bad = local_cluster.kubectl("scale", "wd/w1", "--replicas=50")
    assert bad.returncode == 1
    assert (
        'The Widget "w1" is invalid: spec: Invalid value: "object": replicas must be <= maxReplicas'
        in bad.stderr
    )
    assert ok(local_cluster, "delete", "wd", "w1").strip() == 'widget.example.dev "w1" deleted'
    assert "No resources found" in local_cluster.kubectl("get", "wd").stderr


def test_apply_rejects_unknown_fields_like_kubectls_strict_validation(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    local_cluster.apply_docs([widget_crd()])
    w = widget("w1")
    w["spec"]["junk"] = 1
    r = local_cluster.kubectl("apply", "-f", write(tmp_path, "w.yaml", w))
    assert r.returncode == 1
    assert 'strict decoding error: unknown field "spec.junk"' in r.stderr


def test_the_rpcjob_crd_examples_apply_and_print_columns(local_cluster: LocalCluster) -> None:
    examples = sorted(REPO_ROOT.glob("examples/*/rpcjob.yaml"))
    if not (REPO_ROOT / "crds").is_dir() or not examples:
        pytest.skip("crds/ or examples/ not present yet")
    for path in examples:
        ok(local_cluster, "apply", "-f", str(path))
    header = ok(local_cluster, "get", "rpj").splitlines()[0].split()
    assert header[0] == "NAME" and header[-1] == "AGE" and len(header) > 2
    name = ok(local_cluster, "get", "rpj", "-o", "name").split()[0]
    assert ok(local_cluster, "scale", name, "--replicas=1").strip().endswith("scaled")


def test_builtin_apply_twice_and_pods_table(local_cluster: LocalCluster, tmp_path: Path) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    assert "created" in ok(local_cluster, "apply", "-f", write(tmp_path, "c.yaml", cm))
    cm["data"] = {"b": "2"}
    assert "configured" in ok(local_cluster, "apply", "-f", write(tmp_path, "c.yaml", cm))
    assert ok(local_cluster, "get", "cm", "c", "-o", "jsonpath={.data}") == '{"b":"2"}'
    local_cluster.apply_docs([{
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "default"},
        "involvedObject": {"kind": "ConfigMap", "name": "c"}, "type": "Normal",
        "reason": "Tested", "message": "hello"}])  # fmt: skip
    events = ok(local_cluster, "get", "events").splitlines()
    assert events[0].split()[:4] == ["NAME", "TYPE", "REASON", "OBJECT"]
    assert events[1].split()[:5] == ["e1", "Normal", "Tested", "configmap/c", "hello"]
    nodes = ok(local_cluster, "get", "nodes").splitlines()
    assert nodes[0].split()[:2] == ["NAME", "STATUS"] and nodes[1].split()[:2] == [
        "local-node-0",
        "Ready",
    ]


def test_audit_log_records_verbs_resources_and_user_agents(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    local_cluster.apply_docs([widget_crd()])
    local_cluster.audit.clear()
    ok(local_cluster, "apply", "-f", write(tmp_path, "w.yaml", widget("w1")))
    ok(local_cluster, "scale", "wd/w1", "--replicas=3")
    ok(local_cluster, "get", "wd")
    recs = [r for r in local_cluster.audit.records(user_agent_prefix="kubectl") if r.resource]
    seen = {(r.verb, r.group, r.resource, r.subresource, r.namespace) for r in recs}
    assert ("create", "example.dev", "widgets", "", "default") in seen
    assert ("patch", "example.dev", "widgets", "scale", "default") in seen
    assert ("list", "example.dev", "widgets", "", "default") in seen
    assert all(r.code < 500 for r in recs)
    assert local_cluster.audit.records(user_agent_prefix="no-such-agent") == []


def test_apply_a_kind_list_validates_items_on_the_server(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    """kubectl validates a `kind: List` client-side against /openapi/v2 (protobuf); the local
    server's v2 document has no schemas, so the items are checked server-side, strictly."""
    local_cluster.apply_docs([widget_crd()])
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    items = {"apiVersion": "v1", "kind": "List", "items": [cm, widget("w1")]}
    out = ok(local_cluster, "apply", "-f", write(tmp_path, "list.yaml", items))
    assert out.split("\n")[:2] == ["configmap/c created", "widget.example.dev/w1 created"]

    bad = widget("w2")
    bad["spec"]["junk"] = 1
    items["items"] = [bad]
    r = local_cluster.kubectl("apply", "-f", write(tmp_path, "list.yaml", items))
    assert r.returncode == 1
    assert 'strict decoding error: unknown field "spec.junk"' in r.stderr
