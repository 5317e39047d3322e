"""Emulated API server: merge, strategic-merge and JSON patches; label and field selectors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.localcluster.cluster import LocalCluster
from e2e.localcluster.samples import WIDGET_GROUP, WIDGET_PLURAL, WIDGET_VERSION, widget, widget_crd

WARGS = (WIDGET_GROUP, WIDGET_VERSION, "default", WIDGET_PLURAL)


@pytest.fixture
def api(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    local_cluster.apply_docs([widget_crd()])
    with local_cluster.api_client() as c:
        yield c


def two_container_pod(name: str) -> dict:
    return {
        "metadata": {"name": name, "labels": {"a": "1"}, "finalizers": ["x/one"]},
        "spec": {
            "schedulerName": "nobody",
            "containers": [
                {"name": "c1", "image": "i1", "env": [{"name": "A", "value": "1"}]},
                {"name": "c2", "image": "i2"},
            ],
        },
    }


def test_strategic_merge_merges_containers_by_name_and_finalizers_as_a_set(
    api: client.ApiClient,
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod("default", two_container_pod("p"))
    # The client sends strategic-merge-patch+json for built-in types.
    got = core.patch_namespaced_pod(
        "p",
        "default",
        {
            "metadata": {"labels": {"b": "2"}, "finalizers": ["x/two"]},
            "spec": {"containers": [{"name": "c2", "image": "i2b"}]},
        },
    )
    assert [(c.name, c.image) for c in got.spec.containers] == [("c1", "i1"), ("c2", "i2b")]
    assert got.spec.containers[0].env[0].value == "1"
    assert got.metadata.labels == {"a": "1", "b": "2"}
    assert got.metadata.finalizers == ["x/one", "x/two"]
    got = core.patch_namespaced_pod(
        "p",
        "default",
        {
            "spec": {"containers": [{"name": "c1", "$patch": "delete"}]},
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["x/one"]},
        },
    )
    assert [c.name for c in got.spec.containers] == ["c2"]
    assert got.metadata.finalizers == ["x/two"]


def test_merge_patch_replaces_lists_and_null_deletes(api: client.ApiClient) -> None:
    objs = client.CustomObjectsApi(api)
    objs.create_namespaced_custom_object(*WARGS, widget("w", template={"a": [1, 2], "b": 1}))
    got = objs.patch_namespaced_custom_object(
        *WARGS, "w", {"spec": {"template": {"a": [3], "b": None}}}
    )
    assert got["spec"]["template"] == {"a": [3]}


def test_strategic_merge_on_a_custom_resource_is_415(
    local_cluster: LocalCluster, api: client.ApiClient
) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(*WARGS, widget("w"))
    req = urllib.request.Request(
        f"{local_cluster.url}/apis/{WIDGET_GROUP}/{WIDGET_VERSION}/namespaces/default/widgets/w",
        data=json.dumps({"spec": {"replicas": 2}}).encode(),
        method="PATCH",
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 415
    assert "application/merge-patch+json" in json.loads(e.value.read())["message"]


def test_json_patch_test_failure_is_422_not_500(api: client.ApiClient) -> None:
    objs = client.CustomObjectsApi(api)
    objs.create_namespaced_custom_object(*WARGS, widget("w", 1))
    ok = objs.patch_namespaced_custom_object(
        *WARGS,
        "w",
        [
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 2},
        ],
        _content_type="application/json-patch+json",
    )
    assert ok["spec"]["replicas"] == 2
    with pytest.raises(ApiException) as e:
        objs.patch_namespaced_custom_object(
            *WARGS,
            "w",
            [
                {"op": "test", "path": "/spec/replicas", "value": 1},
                {"op": "replace", "path": "/spec/replicas", "value": 5},
            ],
            _content_type="application/json-patch+json",
        )
    assert e.value.status == 422
    body = json.loads(e.value.body)
    assert body["reason"] == "Invalid"
    assert body["message"] == "the server rejected our request due to an error in our request"
    assert (
        body["details"]["causes"][0]["message"]
        == "testing value /spec/replicas failed: test failed"
    )
    assert objs.get_namespaced_custom_object(*WARGS, "w")["spec"]["replicas"] == 2


def test_merge_patch_with_stale_resource_version_is_409(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    cm = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    core.patch_namespaced_config_map("c", "default", {"data": {"a": "1"}})
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map(
            "c",
            "default",
            {"metadata": {"resourceVersion": cm.metadata.resource_version}, "data": {"a": "2"}},
        )
    assert e.value.status == 409


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=web", {"a", "b"}),
        ("tier==web", {"a", "b"}),
        ("tier!=web", {"c", "d"}),
        ("tier in (web,db)", {"a", "b", "c"}),
        ("tier notin (web)", {"c", "d"}),
        ("tier", {"a", "b", "c"}),
        ("!tier", {"d"}),
        ("tier=web,zone=1", {"a"}),
    ],
)
def test_label_selectors(api: client.ApiClient, selector: str, expected: set[str]) -> None:
    core = client.CoreV1Api(api)
    for name, labels in {
        "a": {"tier": "web", "zone": "1"},
        "b": {"tier": "web"},
        "c": {"tier": "db"},
        "d": {},
    }.items():
        core.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})
    got = core.list_namespaced_config_map("default", label_selector=selector)
    assert {i.metadata.name for i in got.items} == expected


def test_field_selectors_on_pods(local_cluster: LocalCluster, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    local_cluster.create_namespace("other")
    for ns, name, node in (("default", "p1", "n1"), ("default", "p2", "n2"), ("other", "p3", "n1")):
        pod = {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "schedulerName": "nobody",
                "containers": [{"name": "c", "image": "i"}],
            },
        }
        core.create_namespaced_pod(ns, pod)
    core.patch_namespaced_pod_status("p2", "default", {"status": {"phase": "Running"}})

    def names(**kw: str) -> set[str]:
        return {p.metadata.name for p in core.list_pod_for_all_namespaces(**kw).items}

    assert names(field_selector="spec.nodeName=n1") == {"p1", "p3"}
    assert names(field_selector="metadata.namespace=other") == {"p3"}
    assert names(field_selector="metadata.name=p1") == {"p1"}
    assert names(field_selector="status.phase=Running") == {"p2"}
    assert names(field_selector="status.phase!=Running,spec.nodeName=n1") == {"p1", "p3"}
    with pytest.raises(ApiException) as e:
        core.list_pod_for_all_namespaces(field_selector="spec.bogus=x")
    assert e.value.status == 400
    assert json.loads(e.value.body)["message"].endswith("field label not supported: spec.bogus")
