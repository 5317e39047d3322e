"""Emulated API server: discovery, object metadata, writes and conflicts (real client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.localcluster.cluster import LocalCluster
from e2e.localcluster.samples import WIDGET_GROUP, WIDGET_PLURAL, WIDGET_VERSION, widget, widget_crd


@pytest.fixture
def api(local_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    with local_cluster.api_client() as c:
        yield c


@pytest.fixture
def widgets(local_cluster: LocalCluster, api: client.ApiClient) -> client.CustomObjectsApi:
    local_cluster.apply_docs([widget_crd()])
    return client.CustomObjectsApi(api)


def status_of(exc: ApiException) -> dict[str, Any]:
    return dict(json.loads(exc.body))


def test_discovery_lists_core_and_group_resources(api: client.ApiClient) -> None:
    core = client.CoreApi(api).get_api_versions()
    assert core.versions == ["v1"]
    names = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {
        "pods",
        "pods/status",
        "services",
        "nodes",
        "events",
        "namespaces",
        "secrets",
        "configmaps",
        "serviceaccounts",
    } <= names
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    for g in (
        "apps",
        "networking.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
        "rbac.authorization.k8s.io",
    ):
        assert g in groups, g
    netpol = client.NetworkingV1Api(api).get_api_resources().resources
    assert "networkpolicies" in {r.name for r in netpol}
    leases = client.CoordinationV1Api(api).get_api_resources().resources
    assert [r.kind for r in leases if r.name == "leases"] == ["Lease"]


def test_applied_crd_is_established_and_served(
    local_cluster: LocalCluster, api: client.ApiClient
) -> None:
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(widget_crd())
    crd = ext.read_custom_resource_definition("widgets.example.dev")
    conds = {c.type: c.status for c in crd.status.conditions}
    assert conds == {"Established": "True", "NamesAccepted": "True"}
    assert crd.status.accepted_names.kind == "Widget"
    resources = {
        r.name: r
        for r in client.CustomObjectsApi(api)
        .get_api_resources(WIDGET_GROUP, WIDGET_VERSION)
        .resources
    }
    assert set(resources) == {"widgets", "widgets/status", "widgets/scale"}
    assert resources["widgets"].short_names == ["wd"]
    assert resources["widgets/scale"].group == "autoscaling"
    # Deleting the CRD stops serving it (and deletes its objects).
    ext.delete_custom_resource_definition("widgets.example.dev")
    with pytest.raises(ApiException) as e:
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            WIDGET_GROUP, WIDGET_VERSION, "default", WIDGET_PLURAL
        )
    assert e.value.status == 404


def test_kopf_peering_crds_are_served_when_applied(
    local_cluster: LocalCluster, api: client.ApiClient
) -> None:
    peering = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "kopfpeerings.kopf.dev"},
        "spec": {
            "scope": "Namespaced",
            "group": "kopf.dev",
            "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    local_cluster.apply_docs([peering])
    objs = client.CustomObjectsApi(api)
    objs.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        "default",
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "rpcjob"}},
    )
    got = objs.patch_namespaced_custom_object(
        "kopf.dev", "v1", "default", "kopfpeerings", "rpcjob", {"status": {"op-1": {"priority": 0}}}
    )
    assert got["status"] == {"op-1": {"priority": 0}}


def test_writes_set_uid_resource_version_and_generation(widgets: client.CustomObjectsApi) -> None:
    args = (WIDGET_GROUP, WIDGET_VERSION, "default", WIDGET_PLURAL)
    created = widgets.create_namespaced_custom_object(*args, widget("w1", 1))
    meta = created["metadata"]
    assert len(meta["uid"]) == 36 and meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    rv1 = int(meta["resourceVersion"])
    # A spec change bumps generation and resourceVersion.
    spec_patched = widgets.patch_namespaced_custom_object(*args, "w1", {"spec": {"replicas": 2}})
    assert spec_patched["metadata"]["generation"] == 2
    rv2 = int(spec_patched["metadata"]["resourceVersion"])
    assert rv2 > rv1
    # Metadata and status changes bump resourceVersion only.
    labeled = widgets.patch_namespaced_custom_object(
        *args, "w1", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labeled["metadata"]["generation"] == 2
    status = widgets.patch_namespaced_custom_object_status(*args, "w1", {"status": {"replicas": 2}})
    assert status["metadata"]["generation"] == 2
    assert (
        int(status["metadata"]["resourceVersion"])
        > int(labeled["metadata"]["resourceVersion"])
        > rv2
    )
    # resourceVersion is one global counter: another object's write is newer still.
    other = widgets.create_namespaced_custom_object(*args, widget("w2"))
    assert int(other["metadata"]["resourceVersion"]) > int(status["metadata"]["resourceVersion"])
    # The uid never changes.
    assert status["metadata"]["uid"] == meta["uid"]


def test_generate_name(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    a = core.create_namespaced_config_map("default", {"metadata": {"generateName": "cfg-"}})
    b = core.create_namespaced_config_map("default", {"metadata": {"generateName": "cfg-"}})
    assert a.metadata.name.startswith("cfg-") and len(a.metadata.name) == 9
    assert a.metadata.name != b.metadata.name


def test_put_with_stale_resource_version_is_409(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    cm = core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c"}, "data": {"a": "1"}}
    )
    stale = cm.metadata.resource_version
    cm.data = {"a": "2"}
    core.replace_namespaced_config_map("c", "default", cm)
    cm.data = {"a": "3"}
    cm.metadata.resource_version = stale
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("c", "default", cm)
    assert e.value.status == 409
    body = status_of(e.value)
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on configmaps "c": the object has been modified; please '
        "apply your changes to the latest version and try again"
    )
    assert core.read_namespaced_config_map("c", "default").data == {"a": "2"}


def test_not_found_already_exists_and_missing_namespace(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("nope", "default")
    assert (e.value.status, status_of(e.value)["message"]) == (404, 'pods "nope" not found')
    core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert core.read_namespaced_secret("s", "default").data == {"k": "dg=="}  # stringData folded
    with pytest.raises(ApiException) as e:
        core.create_namespaced_secret("default", {"metadata": {"name": "s"}})
    assert (e.value.status, status_of(e.value)["message"]) == (409, 'secrets "s" already exists')
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("ghost", {"metadata": {"name": "c"}})
    assert (e.value.status, status_of(e.value)["message"]) == (404, 'namespaces "ghost" not found')


def test_invalid_name_is_rejected_like_the_server(api: client.ApiClient) -> None:
    with pytest.raises(ApiException) as e:
        client.CoreV1Api(api).create_namespaced_config_map(
            "default", {"metadata": {"name": "Bad_Name"}}
        )
    assert e.value.status == 422
    assert status_of(e.value)["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase '
        "RFC 1123 subdomain"
    )


def test_rbac_objects_are_stored(api: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_cluster_role(
        {
            "metadata": {"name": "r"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        }
    )
    assert rbac.read_cluster_role("r").rules[0].resources == ["pods"]
