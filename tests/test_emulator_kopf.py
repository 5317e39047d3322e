"""kopf 1.45 against the emulated API server: a tiny operator reacts to create, update and
delete of a custom resource and patches its status (proves kopf's list/watch/patch/finalizer
and event flows work, i.e. that kopf does not stall)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.localcluster.cluster import LocalCluster
from e2e.localcluster.samples import WIDGET_GROUP, WIDGET_PLURAL, WIDGET_VERSION, widget, widget_crd

WARGS = (WIDGET_GROUP, WIDGET_VERSION, "default", WIDGET_PLURAL)

OPERATOR = """
import pathlib, kopf

@kopf.on.startup()
def configure(settings, **_):
    settings.watching.server_timeout = 10
    settings.persistence.finalizer = "example.dev/kopf-finalizer"

@kopf.on.create("example.dev", "v1", "widgets")
@kopf.on.update("example.dev", "v1", "widgets")
def sync(spec, patch, body, **_):
    kopf.info(body, reason="Synced", message=f"replicas={spec['replicas']}")
    patch.status["replicas"] = spec["replicas"]
    patch.status["message"] = "seen by kopf"

@kopf.on.delete("example.dev", "v1", "widgets")
def gone(name, **_):
    pathlib.Path(r"{marker}").joinpath(name).write_text("deleted")
"""


@pytest.fixture
def kopf_operator(local_cluster: LocalCluster, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    local_cluster.apply_docs([widget_crd()])
    op = tmp_path / "op.py"
    op.write_text(OPERATOR.replace("{marker}", str(tmp_path)))
    log = open(tmp_path / "kopf.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace=default", str(op)],
        env={**os.environ, "KUBECONFIG": local_cluster.kubeconfig},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    if os.environ.get("SHOW_KOPF_LOG"):
        print((tmp_path / "kopf.log").read_text())


def test_kopf_reacts_to_create_update_delete(
    local_cluster: LocalCluster, kopf_operator: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    with local_cluster.api_client() as api:
        objs = client.CustomObjectsApi(api)
        objs.create_namespaced_custom_object(*WARGS, widget("w", 2))

        def status() -> dict:
            assert kopf_operator.poll() is None, (tmp_path / "kopf.log").read_text()
            return dict(objs.get_namespaced_custom_object(*WARGS, "w").get("status") or {})

        local_cluster.wait_for(
            lambda: status().get("replicas") == 2, 90, message="kopf create handler"
        )
        assert status()["message"] == "seen by kopf"
        w = objs.get_namespaced_custom_object(*WARGS, "w")
        assert "example.dev/kopf-finalizer" in w["metadata"]["finalizers"]
        objs.patch_namespaced_custom_object(*WARGS, "w", {"spec": {"replicas": 4}})
        local_cluster.wait_for(
            lambda: status().get("replicas") == 4, 60, message="kopf update handler"
        )
        objs.delete_namespaced_custom_object(*WARGS, "w")

        def gone() -> bool:
            try:
                objs.get_namespaced_custom_object(*WARGS, "w")
            except ApiException as e:
                return e.status == 404
            return False

        local_cluster.wait_for(gone, 60, message="kopf delete handler releasing its finalizer")
        assert (tmp_path / "w").read_text() == "deleted"
        # kopf reported its handlers as Kubernetes events, and the audit log saw its calls.
        core = client.CoreV1Api(api)
        local_cluster.wait_for(
            lambda: any(
                e.involved_object.name == "w"
                and e.source.component == "kopf"
                and e.reason == "Synced"
                for e in core.list_namespaced_event("default").items
            ),
            30,
            message="kopf's events",
        )
    kopf_calls = local_cluster.audit.records(user_agent_prefix="kopf")
    verbs = {(r.verb, r.resource, r.subresource) for r in kopf_calls}
    assert ("watch", "widgets", "") in verbs and ("patch", "widgets", "") in verbs
    assert ("create", "events", "") in verbs
