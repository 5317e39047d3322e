"""Emulated API server: status and scale subresources, finalizers and deletionTimestamp,
ownerReference garbage collection, namespace deletion, CRD validation and pruning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture
def objs(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def message(exc: ApiException) -> str:
    return str(json.loads(exc.body)["message"])


# --- status and scale ------------------------------------------------------------------------
def test_status_subresource_separates_spec_and_status(objs: client.CustomObjectsApi) -> None:
    objs.create_namespaced_custom_object(*WARGS, {**widget("w", 1), "status": {"replicas": 9}})
    assert "status" not in objs.get_namespaced_custom_object(*WARGS, "w")  # ignored on create
    got = objs.patch_namespaced_custom_object_status(
        *WARGS, "w", {"spec": {"replicas": 5}, "status": {"replicas": 1}}
    )
    assert (got["spec"]["replicas"], got["status"]["replicas"]) == (1, 1)
    got = objs.patch_namespaced_custom_object(
        *WARGS, "w", {"spec": {"replicas": 2}, "status": {"replicas": 7}}
    )
    assert (got["spec"]["replicas"], got["status"]["replicas"]) == (2, 1)
    full = objs.get_namespaced_custom_object_status(*WARGS, "w")
    full["status"]["message"] = "via PUT"
    assert (
        objs.replace_namespaced_custom_object_status(*WARGS, "w", full)["status"]["message"]
        == "via PUT"
    )


def test_scale_subresource_maps_crd_paths(objs: client.CustomObjectsApi) -> None:
    objs.create_namespaced_custom_object(*WARGS, widget("w", 2))
    objs.patch_namespaced_custom_object_status(
        *WARGS, "w", {"status": {"replicas": 1, "selector": "app=w"}}
    )
    scale = objs.get_namespaced_custom_object_scale(*WARGS, "w")
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"] == {"replicas": 1, "selector": "app=w"}
    scale["spec"]["replicas"] = 4
    assert objs.replace_namespaced_custom_object_scale(*WARGS, "w", scale)["spec"]["replicas"] == 4
    got = objs.patch_namespaced_custom_object_scale(*WARGS, "w", {"spec": {"replicas": 6}})
    assert got["spec"]["replicas"] == 6
    w = objs.get_namespaced_custom_object(*WARGS, "w")
    assert (w["spec"]["replicas"], w["metadata"]["generation"]) == (6, 3)
    # The object's CEL rules apply to scale writes too.
    with pytest.raises(ApiException) as e:
        objs.patch_namespaced_custom_object_scale(*WARGS, "w", {"spec": {"replicas": 11}})
    assert e.value.status == 422
    assert message(e.value) == (
        'Widget.example.dev "w" is invalid: spec: Invalid value: "object": '
        "replicas must be <= maxReplicas"
    )


def test_deployment_scale(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(
        "default",
        {
            "metadata": {"name": "d"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            },
        },
    )
    apps.patch_namespaced_deployment_scale("d", "default", {"spec": {"replicas": 3}})
    assert apps.read_namespaced_deployment("d", "default").spec.replicas == 3


# --- finalizers, deletion, garbage collection ------------------------------------------------
def test_finalizers_hold_deletion_until_removed(objs: client.CustomObjectsApi) -> None:
    w = widget("w")
    w["metadata"]["finalizers"] = ["example.dev/hold"]
    objs.create_namespaced_custom_object(*WARGS, w)
    objs.delete_namespaced_custom_object(*WARGS, "w")
    held = objs.get_namespaced_custom_object(*WARGS, "w")
    assert held["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as e:
        objs.patch_namespaced_custom_object(
            *WARGS, "w", {"metadata": {"finalizers": ["example.dev/hold", "x/new"]}}
        )
    assert e.value.status == 422 and "no new finalizers can be added" in message(e.value)
    objs.patch_namespaced_custom_object(*WARGS, "w", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as e:
        objs.get_namespaced_custom_object(*WARGS, "w")
    assert e.value.status == 404


def _owned_cm(
    core: client.CoreV1Api, name: str, owner: dict[str, Any], finalizers: list[str] | None = None
) -> None:
    core.create_namespaced_config_map(
        "default",
        {
            "metadata": {
                "name": name,
                "finalizers": finalizers or [],
                "ownerReferences": [
                    {
                        "apiVersion": owner["apiVersion"],
                        "kind": owner["kind"],
                        "name": owner["metadata"]["name"],
                        "uid": owner["metadata"]["uid"],
                        "blockOwnerDeletion": True,
                    }
                ],
            }
        },
    )


def test_garbage_collection_background_honours_dependent_finalizers(
    api: client.ApiClient, objs: client.CustomObjectsApi
) -> None:
    core = client.CoreV1Api(api)
    owner = objs.create_namespaced_custom_object(*WARGS, widget("owner"))
    _owned_cm(core, "dep", owner)
    _owned_cm(core, "held", owner, ["x/keep"])
    objs.delete_namespaced_custom_object(*WARGS, "owner")
    names = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
    assert names == {"held"}
    assert core.read_namespaced_config_map("held", "default").metadata.deletion_timestamp


def test_garbage_collection_orphan_and_foreground(
    api: client.ApiClient, objs: client.CustomObjectsApi
) -> None:
    core = client.CoreV1Api(api)
    owner = objs.create_namespaced_custom_object(*WARGS, widget("o1"))
    _owned_cm(core, "orphan", owner)
    objs.delete_namespaced_custom_object(*WARGS, "o1", propagation_policy="Orphan")
    assert core.read_namespaced_config_map("orphan", "default").metadata.owner_references is None
    owner = objs.create_namespaced_custom_object(*WARGS, widget("o2"))
    _owned_cm(core, "blocker", owner, ["x/keep"])
    objs.delete_namespaced_custom_object(*WARGS, "o2", propagation_policy="Foreground")
    waiting = objs.get_namespaced_custom_object(*WARGS, "o2")
    assert "foregroundDeletion" in waiting["metadata"]["finalizers"]
    core.patch_namespaced_config_map("blocker", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as e:
        objs.get_namespaced_custom_object(*WARGS, "o2")
    assert e.value.status == 404


def test_namespace_deletion_removes_its_content(
    local_cluster: LocalCluster, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    local_cluster.create_namespace("gone")
    core.create_namespaced_config_map("gone", {"metadata": {"name": "c", "finalizers": ["x/k"]}})
    core.delete_namespace("gone")
    assert core.read_namespace("gone").status.phase == "Terminating"
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map("gone", {"metadata": {"name": "new"}})
    assert e.value.status == 403 and "being terminated" in message(e.value)
    core.patch_namespaced_config_map("c", "gone", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as e:
        core.read_namespace("gone")
    assert e.value.status == 404


# --- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"replicas": -1},
            'Widget.example.dev "bad" is invalid: spec.replicas: Invalid value: -1: '
            "spec.replicas in body should be greater than or equal to 0",
        ),
        (
            {"replicas": "two"},
            'Widget.example.dev "bad" is invalid: spec.replicas: Invalid value: "string": '
            'spec.replicas in body must be of type integer: "string"',
        ),
        (
            {"replicas": 1, "color": "green"},
            'Widget.example.dev "bad" is invalid: spec.color: Unsupported value: "green": '
            'supported values: "red", "blue"',
        ),
        (
            {"replicas": 20},
            'Widget.example.dev "bad" is invalid: spec: Invalid value: "object": '
            "replicas must be <= maxReplicas",
        ),
        ({}, 'Widget.example.dev "bad" is invalid: spec.replicas: Required value'),
    ],
)
def test_custom_resources_are_validated_like_the_server(
    objs: client.CustomObjectsApi, spec: dict[str, Any], expected: str
) -> None:
    body = widget("bad")
    body["spec"] = spec
    with pytest.raises(ApiException) as e:
        objs.create_namespaced_custom_object(*WARGS, body)
    assert e.value.status == 422
    status = json.loads(e.value.body)
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "Widget"
    assert status["message"] == expected


def test_transition_rules_see_old_self(objs: client.CustomObjectsApi) -> None:
    objs.create_namespaced_custom_object(*WARGS, widget("w", color="blue"))
    with pytest.raises(ApiException) as e:
        objs.patch_namespaced_custom_object(*WARGS, "w", {"spec": {"color": "red"}})
    assert (
        message(e.value)
        == 'Widget.example.dev "w" is invalid: spec: Invalid value: "object": color is immutable'
    )


def test_unknown_fields_are_pruned_and_defaults_applied(objs: client.CustomObjectsApi) -> None:
    body = widget("w", template={"free": {"form": 1}})
    body["spec"]["junk"] = True
    body["bogus"] = 1
    got = objs.create_namespaced_custom_object(*WARGS, body)
    assert got["spec"] == {
        "replicas": 1,
        "maxReplicas": 10,
        "color": "red",
        "template": {"free": {"form": 1}},
    }
    assert "bogus" not in got


def test_strict_field_validation_rejects_unknown_fields(
    local_cluster: LocalCluster, objs: client.CustomObjectsApi
) -> None:
    body = widget("w")
    body["spec"]["junk"] = True
    with pytest.raises(ApiException) as e:
        objs.create_namespaced_custom_object(*WARGS, body, field_validation="Strict")
    assert e.value.status == 400
    assert message(e.value) == 'strict decoding error: unknown field "spec.junk"'
