"""The process kubelet: pods run as local processes with the pod's env, volumes, sidecars,
restart policy, grace on deletion, scheduling and probes (real client, real processes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.localcluster.cluster import LocalCluster

PY = "python3"


@pytest.fixture
def core(local_cluster: LocalCluster) -> Iterator[client.CoreV1Api]:
    with local_cluster.api_client() as c:
        yield client.CoreV1Api(c)


def pod_status(core: client.CoreV1Api, name: str) -> dict[str, Any]:
    return dict(
        core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, "default"))[
            "status"
        ]
    )


def wait_phase(
    cluster: LocalCluster,
    core: client.CoreV1Api,
    name: str,
    phases: tuple[str, ...],
    timeout: float = 60,
) -> dict[str, Any]:
    return cluster.wait_for(
        lambda: (s := pod_status(core, name)).get("phase") in phases and s,
        timeout,
        message=f"pod {name} in {phases}",
    )


def test_native_sidecar_and_main_share_an_emptydir_and_see_the_downward_api(
    local_cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    sidecar = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "open(os.environ['SOCK_DIR'] + '/ready', 'w').write(os.environ['POD_NAME'])\n"
        "time.sleep(600)\n"
    )
    main = (
        "import json, os, sys, time\n"
        "p = sys.argv[1] + '/ready'\n"
        "deadline = time.time() + 30\n"
        "while not os.path.exists(p) and time.time() < deadline: time.sleep(0.02)\n"
        "keys = ['POD_NAME', 'POD_NS', 'POD_UID', 'POD_IP', 'NODE', 'ROLE',\n"
        "        'RPCJOB_LOCAL_POD_IP']\n"
        "env = {k: os.environ[k] for k in keys}\n"
        "print(json.dumps({'env': env, 'sidecar': open(p).read(), 'cwd': os.getcwd()}))\n"
        "sys.exit(3)\n"
    )
    downward = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "ROLE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['role']"}}},
    ]
    mount = [{"name": "sock", "mountPath": "/var/run/rpcjob"}]
    created = core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "p", "labels": {"role": "worker"}},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "sock", "emptyDir": {}}],
                "initContainers": [
                    {
                        "name": "sidecar",
                        "image": "x",
                        "restartPolicy": "Always",
                        "command": [PY, "-c", sidecar],
                        "volumeMounts": mount,
                        "env": [{"name": "SOCK_DIR", "value": "/var/run/rpcjob"}, *downward],
                    }
                ],
                "containers": [
                    {
                        "name": "main",
                        "image": "x",
                        "command": [PY, "-c", main],
                        "args": ["/var/run/rpcjob"],
                        "workingDir": "/workspace",
                        "volumeMounts": mount,
                        "env": downward,
                    }
                ],
            },
        },
    )
    status = wait_phase(local_cluster, core, "p", ("Succeeded", "Failed"))
    assert status["phase"] == "Failed"
    main_status = status["containerStatuses"][0]
    assert main_status["state"]["terminated"]["exitCode"] == 3
    side_status = status["initContainerStatuses"][0]
    assert side_status["state"]["terminated"]["exitCode"] == 0  # stopped after main exited
    out = json.loads(local_cluster.pod_logs("default", "p", "main"))
    ip = status["podIP"]
    assert ip.startswith("127.") and not ip.startswith("127.0.0.")
    assert out["env"] == {
        "POD_NAME": "p",
        "POD_NS": "default",
        "POD_UID": created.metadata.uid,
        "POD_IP": ip,
        "NODE": "local-node-0",
        "ROLE": "worker",
        "RPCJOB_LOCAL_POD_IP": ip,
    }
    assert out["sidecar"] == "p"
    assert out["cwd"].endswith("/workspace")
    # kubectl logs reads the same file.
    assert json.loads(local_cluster.kubectl("logs", "p", "-c", "main").stdout) == out


def test_restart_policy_on_failure_counts_restarts(
    local_cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    flaky = (
        "import os, sys\n"
        "p = '/state/count'\n"
        "n = int(open(p).read()) if os.path.exists(p) else 0\n"
        "open(p, 'w').write(str(n + 1))\n"
        "sys.exit(0 if n >= 2 else 5)\n"
    )
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "flaky"},
            "spec": {
                "restartPolicy": "OnFailure",
                "volumes": [{"name": "s", "emptyDir": {}}],
                "containers": [
                    {
                        "name": "c",
                        "image": "x",
                        "command": [PY, "-c", flaky],
                        "volumeMounts": [{"name": "s", "mountPath": "/state"}],
                    }
                ],
            },
        },
    )
    status = wait_phase(local_cluster, core, "flaky", ("Succeeded", "Failed"))
    c = status["containerStatuses"][0]
    assert status["phase"] == "Succeeded"
    assert c["restartCount"] == 2
    assert c["lastState"]["terminated"]["exitCode"] == 5
    assert c["state"]["terminated"]["exitCode"] == 0


def test_restart_policy_always_restarts_exits(
    local_cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "always"},
            "spec": {
                "containers": [
                    {"name": "c", "image": "x", "command": [PY, "-c", "raise SystemExit(0)"]}
                ]
            },
        },
    )
    local_cluster.wait_for(
        lambda: pod_status(core, "always")["containerStatuses"][0]["restartCount"] >= 2,
        60,
        message="two restarts",
    )
    assert pod_status(core, "always")["phase"] == "Running"


def _final_status_before_delete(core: client.CoreV1Api, name: str, rv: str) -> dict[str, Any]:
    resp = core.list_namespaced_pod(
        "default",
        watch=True,
        resource_version=rv,
        timeout_seconds=60,
        field_selector=f"metadata.name={name}",
        _preload_content=False,
    )
    last: dict[str, Any] = {}
    for line in resp:
        ev = json.loads(line)
        if ev["type"] == "DELETED":
            break
        last = ev["object"]["status"]
    resp.release_conn()
    return last


@pytest.mark.parametrize(
    ("handler", "grace", "exit_code"),
    [
        (
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))",
            30,
            0,
        ),  # drains and exits on SIGTERM
        (
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
            1,
            137,
        ),  # ignores it: SIGKILL after grace
    ],
)
def test_deletion_sends_sigterm_then_sigkill_after_grace(
    local_cluster: LocalCluster, core: client.CoreV1Api, handler: str, grace: int, exit_code: int
) -> None:
    code = f"import signal, sys, time\n{handler}\nprint('up', flush=True)\ntime.sleep(600)\n"
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "g"},
            "spec": {
                "terminationGracePeriodSeconds": grace,
                "containers": [{"name": "c", "image": "x", "command": [PY, "-u", "-c", code]}],
            },
        },
    )
    local_cluster.wait_for(
        lambda: "up" in local_cluster.pod_logs("default", "g"), 60, message="process up"
    )
    rv = core.read_namespaced_pod("g", "default").metadata.resource_version
    deleting = core.delete_namespaced_pod("g", "default")
    assert deleting.metadata.deletion_timestamp is not None
    assert deleting.metadata.deletion_grace_period_seconds == grace
    final = _final_status_before_delete(core, "g", rv)
    assert final["containerStatuses"][0]["state"]["terminated"]["exitCode"] == exit_code
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("g", "default")
    assert e.value.status == 404


def test_scheduler_honours_node_selector_and_gpu_requests(local_cluster_factory: Any) -> None:
    cluster = local_cluster_factory(
        nodes=2, gpus_per_node=2, node_labels=[{"zone": "a"}, {"zone": "b"}]
    )
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        show = "import os; print(os.environ.get('NVIDIA_VISIBLE_DEVICES'))"
        for name, gpus, selector in (("g2", 2, {"zone": "b"}), ("g1", 1, {}), ("big", 3, {})):
            core.create_namespaced_pod(
                "default",
                {
                    "metadata": {"name": name},
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": selector,
                        "containers": [
                            {
                                "name": "c",
                                "image": "x",
                                "command": [PY, "-c", show],
                                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                            }
                        ],
                    },
                },
            )
        wait_phase(cluster, core, "g2", ("Succeeded",))
        assert core.read_namespaced_pod("g2", "default").spec.node_name == "local-node-1"
        assert cluster.pod_logs("default", "g2").strip() == "0,1"
        wait_phase(cluster, core, "g1", ("Succeeded",))
        assert cluster.pod_logs("default", "g1").strip() == "0"
        big = cluster.wait_for(lambda: (s := pod_status(core, "big")).get("conditions") and s, 30)
        cond = big["conditions"][0]
        assert (cond["type"], cond["status"], cond["reason"]) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        )
        assert cond["message"] == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
        node = core.read_node("local-node-0")
        assert node.metadata.labels["nvidia.com/gpu.count"] == "2"
        assert node.status.allocatable["nvidia.com/gpu"] == "2"


def test_readiness_probe_and_pod_ips(local_cluster: LocalCluster, core: client.CoreV1Api) -> None:
    ip_env = [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    for name in ("web-a", "web-b"):  # same port, each on its own loopback IP
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": name},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "x",
                            "env": ip_env,
                            "command": [PY, "-m", "http.server", "18080", "--bind", "$(IP)"],
                            "ports": [{"name": "http", "containerPort": 18080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 1,
                            },
                        }
                    ]
                },
            },
        )
    for name in ("web-a", "web-b"):
        status = local_cluster.wait_for(
            lambda n=name: (
                (s := pod_status(core, n))
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in s.get("conditions") or []
                )
                and s
            ),
            60,
            message=f"{name} Ready",
        )
        assert status["containerStatuses"][0]["ready"] is True
    ips = {pod_status(core, n)["podIP"] for n in ("web-a", "web-b")}
    assert len(ips) == 2
    wide = local_cluster.kubectl("get", "pods", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert {line.split()[5] for line in wide[1:]} == ips


def test_init_containers_run_in_order_before_the_containers(
    local_cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    def step(n: int) -> dict[str, Any]:
        code = f"open('/shared/order', 'a').write('init{n} ')"
        return {"name": f"init{n}", "image": "x", "command": [PY, "-c", code],
                "volumeMounts": [{"name": "s", "mountPath": "/shared"}]}  # fmt: skip

    main = "print(open('/shared/order').read().strip())"
    core.create_namespaced_pod("default", {"metadata": {"name": "ordered"}, "spec": {
        "restartPolicy": "Never", "volumes": [{"name": "s", "emptyDir": {}}],
        "initContainers": [step(1), step(2)],
        "containers": [{"name": "main", "image": "x", "command": [PY, "-c", main],
                        "volumeMounts": [{"name": "s", "mountPath": "/shared"}]}]}})  # fmt: skip
    status = wait_phase(local_cluster, core, "ordered", ("Succeeded", "Failed"))
    assert status["phase"] == "Succeeded"
    assert local_cluster.pod_logs("default", "ordered", "main").strip() == "init1 init2"
    assert [s["state"]["terminated"]["exitCode"] for s in status["initContainerStatuses"]] == [0, 0]


def test_failing_init_container_fails_a_never_restart_pod(
    local_cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    core.create_namespaced_pod("default", {"metadata": {"name": "badinit"}, "spec": {
        "restartPolicy": "Never",
        "initContainers": [{"name": "init", "image": "x", "command": [PY, "-c", "exit(4)"]}],
        "containers": [{"name": "main", "image": "x",
                        "command": [PY, "-c", "print('never')"]}]}})  # fmt: skip
    status = wait_phase(local_cluster, core, "badinit", ("Succeeded", "Failed"))
    assert status["phase"] == "Failed"
    assert status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 4
    assert "waiting" in status["containerStatuses"][0]["state"]  # main never started


def test_missing_command_is_a_config_error_naming_the_fix(
    local_cluster: LocalCluster, core: client.CoreV1Api
) -> None:
    core.create_namespaced_pod("default", {"metadata": {"name": "nocmd"}, "spec": {
        "containers": [{"name": "c", "image": "registry.example/unknown:1"}]}})  # fmt: skip
    status = local_cluster.wait_for(
        lambda: (s := pod_status(core, "nocmd")).get("containerStatuses")
        and "CreateContainerConfigError" in json.dumps(s) and s, 30)  # fmt: skip
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"
    assert (
        "set 'command' in the container spec or register the image's entrypoint"
        in waiting["message"]
    )
