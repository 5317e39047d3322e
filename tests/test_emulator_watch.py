"""Emulated API server: list + watch semantics (resourceVersion, history, 410, bookmarks,
timeoutSeconds, selectors), checked with the real client's raw HTTP stream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch

from e2e.localcluster.cluster import LocalCluster


@pytest.fixture
def core(local_cluster: LocalCluster) -> Iterator[client.CoreV1Api]:
    with local_cluster.api_client() as c:
        yield client.CoreV1Api(c)


def cm(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}}


def raw_watch(core: client.CoreV1Api, **params: Any) -> list[dict[str, Any]]:
    """One watch request to its end (timeoutSeconds), every event line as sent."""
    resp = core.list_namespaced_config_map("default", watch=True, _preload_content=False, **params)
    try:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line]
    finally:
        resp.release_conn()


def test_watch_from_list_version_loses_nothing_and_duplicates_nothing(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_config_map("default", cm("before"))
    listing = core.list_namespaced_config_map("default")
    rv = listing.metadata.resource_version
    # Writes between the list and the watch must all be replayed, in order.
    core.create_namespaced_config_map("default", cm("after-1"))
    core.patch_namespaced_config_map("after-1", "default", {"data": {"x": "1"}})
    core.delete_namespaced_config_map("before", "default")
    events = raw_watch(core, resource_version=rv, timeout_seconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "after-1"),
        ("MODIFIED", "after-1"),
        ("DELETED", "before"),
    ]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_watch_without_version_starts_with_current_state(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", cm("a"))
    events = raw_watch(core, timeout_seconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a")]


def test_too_old_resource_version_is_a_410_error_event(
    local_cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    old = core.create_namespaced_config_map("default", cm("a")).metadata.resource_version
    core.create_namespaced_config_map("default", cm("b"))
    local_cluster.store.compact()
    events = raw_watch(core, resource_version=old, timeout_seconds=5)
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"].startswith(f"too old resource version: {old}")


def test_bookmarks_carry_the_current_version(local_cluster_factory: Any) -> None:
    cluster = local_cluster_factory(kubelet=False, bookmark_interval=0.2)
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        rv = core.create_namespaced_config_map("default", cm("a")).metadata.resource_version
        events = raw_watch(core, resource_version=rv, timeout_seconds=1, allow_watch_bookmarks=True)
        marks = [e for e in events if e["type"] == "BOOKMARK"]
        assert marks and marks[0]["object"]["kind"] == "ConfigMap"
        assert int(marks[-1]["object"]["metadata"]["resourceVersion"]) >= int(rv)
        plain = raw_watch(core, resource_version=rv, timeout_seconds=1)
        assert not [e for e in plain if e["type"] == "BOOKMARK"]


def test_watch_honours_selectors_and_reports_objects_leaving_them(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", cm("in", {"app": "x"}))
    core.create_namespaced_config_map("default", cm("out", {"app": "y"}))
    core.patch_namespaced_config_map("in", "default", {"metadata": {"labels": {"app": "z"}}})
    core.patch_namespaced_config_map("out", "default", {"metadata": {"labels": {"app": "x"}}})
    events = raw_watch(core, resource_version=rv, timeout_seconds=1, label_selector="app=x")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "in"),
        ("DELETED", "in"),
        ("ADDED", "out"),
    ]
    named = raw_watch(
        core, resource_version=rv, timeout_seconds=1, field_selector="metadata.name=out"
    )
    assert {e["object"]["metadata"]["name"] for e in named} == {"out"}


def test_streaming_watch_sees_later_writes(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    seen: list[str] = []
    done = threading.Event()

    def consume() -> None:
        w = watch.Watch()
        for ev in w.stream(
            core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=20
        ):
            seen.append(f"{ev['type']}:{ev['object'].metadata.name}")
            if len(seen) == 2:
                w.stop()
        done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    core.create_namespaced_config_map("default", cm("live"))
    core.delete_namespaced_config_map("live", "default")
    assert done.wait(20)
    assert seen == ["ADDED:live", "DELETED:live"]
