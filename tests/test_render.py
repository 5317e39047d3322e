"""Pure renderers: pod (sidecar, env contract, hardening), Service, NetworkPolicy, env."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest

from rpcjob import contract
from rpcjob_operator import names
from rpcjob_operator.localexec.podenv import ContainerConfigError, PodInfo, resolve_env
from rpcjob_operator.model import Slot
from rpcjob_operator.render import (
    OperatorDefaults,
    render_network_policy,
    render_pod,
    render_service,
)
from rpcjob_operator.render.defaults import ENV_METRICS_NAMESPACE_SELECTOR
from rpcjob_operator.spec import RpcJob, parse_job

DEFAULTS = OperatorDefaults(sidecar_image="reg/sidecar:1", etcd_endpoints=("etcd.sys:2379",))


def make_job(**spec: Any) -> RpcJob:
    worker = {
        "name": "worker",
        "image": "img",
        "command": ["python", "-m", "app"],
        "env": [{"name": "MY_VAR", "value": "$(RPCJOB_WORKER_NAME)-x"}],
    }
    spec.setdefault(
        "roles",
        {
            "worker": {
                "replicas": 2,
                "maxReplicas": 8,
                "template": {
                    "metadata": {"labels": {"team": "rl"}, "annotations": {"a": "b"}},
                    "spec": {"containers": [worker]},
                },
            },
            "ps": {"replicas": 1, "template": {"spec": {"containers": [copy.deepcopy(worker)]}}},
        },
    )
    return parse_job(
        {
            "apiVersion": contract.API_VERSION,
            "kind": contract.KIND,
            "metadata": {"name": "demo", "namespace": "ns", "uid": "uid-1", "generation": 4},
            "spec": spec,
        }
    )


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def containers(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (worker,) = [c for c in pod["spec"]["containers"] if c["name"] == "worker"]
    (sidecar,) = [
        c for c in pod["spec"]["initContainers"] if c["name"] == contract.SIDECAR_CONTAINER
    ]
    return worker, sidecar


def test_pod_identity_labels_owner_and_dns() -> None:
    pod = render_pod(make_job(), Slot("worker", 5), defaults=DEFAULTS)
    md = pod["metadata"]
    assert md["name"] == "demo-worker-5" and md["namespace"] == "ns"
    assert md["labels"] == {
        "team": "rl",
        contract.LABEL_JOB_NAME: "demo",
        contract.LABEL_JOB_UID: "uid-1",
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
        contract.LABEL_ROLE: "worker",
        contract.LABEL_INDEX: "5",
        contract.LABEL_WORKER_NAME: "worker_5",
    }
    assert md["annotations"] == {"a": "b", contract.ANNOTATION_SPEC_GENERATION: "4"}
    assert md["ownerReferences"] == [
        {
            "apiVersion": contract.API_VERSION,
            "kind": contract.KIND,
            "name": "demo",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = pod["spec"]
    assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == (
        "demo-worker-5",
        "demo",
        "Never",
    )


def test_native_sidecar_is_injected() -> None:
    pod = render_pod(make_job(), Slot("worker", 0), defaults=DEFAULTS)
    worker, sidecar = containers(pod)
    assert pod["spec"]["initContainers"][-1] is sidecar
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["rpcjob-sidecar"] and sidecar["image"] == "reg/sidecar:1"
    port = contract.SIDECAR_HTTP_PORT
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    # a busy node must not restart a healthy member: a minute of silence, not 3 s
    live = sidecar["livenessProbe"]
    assert live["timeoutSeconds"] * live["failureThreshold"] >= 30 and live["timeoutSeconds"] >= 5
    socket_mount = {"name": contract.SOCKET_VOLUME, "mountPath": contract.SOCKET_DIR}
    assert socket_mount in sidecar["volumeMounts"] and socket_mount in worker["volumeMounts"]
    assert {"name": contract.SOCKET_VOLUME, "emptyDir": {}} in pod["spec"]["volumes"]
    assert worker["command"] == ["python", "-m", "app"]  # the user's command, untouched


def test_env_contract_for_both_containers() -> None:
    pod = render_pod(make_job(), Slot("worker", 1), defaults=DEFAULTS)
    worker, sidecar = containers(pod)
    for c in (worker, sidecar):
        env = env_of(c)
        assert env[contract.ENV_JOB_NAME] == "demo" and env[contract.ENV_JOB_UID] == "uid-1"
        assert (env[contract.ENV_ROLE], env[contract.ENV_INDEX]) == ("worker", "1")
        assert env[contract.ENV_WORKER_NAME] == "worker_1"
        assert env[contract.ENV_SOCKET] == contract.socket_path()
        assert env[contract.ENV_ETCD_ENDPOINTS] == "etcd.sys:2379"
        assert json.loads(env[contract.ENV_SLOTS]) == {"ps": 1, "worker": 8}
        assert env[contract.ENV_GPUS] == ""
        assert json.loads(env[contract.ENV_ROLE_GPUS]) == {"ps": 0, "worker": 0}
        assert env[contract.ENV_RPC_TIMEOUT] == "60"
        assert env[contract.ENV_RPC_THREADS] == "16"
        assert env[contract.ENV_DEVICE_MAPS] == "auto"
        assert env[contract.ENV_RPC_TRANSPORT] == "tcp"  # the worker reads it (no idle spin)
        for var, path in [
            (contract.ENV_POD_NAME, "metadata.name"),
            (contract.ENV_NAMESPACE, "metadata.namespace"),
            (contract.ENV_POD_IP, "status.podIP"),
            (contract.ENV_NODE_NAME, "spec.nodeName"),
        ]:
            assert env[var] == {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}
        assert contract.ENV_ETCD_PASSWORD not in env  # no auth configured
    senv = env_of(sidecar)
    assert senv[contract.ENV_HTTP_ADDR] == f"$({contract.ENV_POD_IP}):{contract.SIDECAR_HTTP_PORT}"
    assert senv[contract.ENV_LEASE_TTL] == str(contract.DEFAULT_LEASE_TTL)
    # The user's env comes after ours, so it can reference our values.
    assert [e["name"] for e in worker["env"]][-1] == "MY_VAR"


def test_etcd_tls_and_auth_from_the_job_beat_the_defaults() -> None:
    job = make_job(
        etcd={
            "endpoints": ["a:1", "b:2"],
            "tlsSecretRef": {"name": "tls"},
            "authSecretRef": {"name": "auth"},
        }
    )
    defaults = OperatorDefaults(etcd_endpoints=("x:1",), etcd_tls_secret="other")
    pod = render_pod(job, Slot("ps", 0), defaults=defaults)
    worker, sidecar = containers(pod)
    for c in (worker, sidecar):
        env = env_of(c)
        assert env[contract.ENV_ETCD_ENDPOINTS] == "a:1,b:2"
        assert env[contract.ENV_ETCD_CA] == f"{names.ETCD_TLS_DIR}/{contract.ETCD_TLS_CA_KEY}"
        assert env[contract.ENV_ETCD_CERT] == f"{names.ETCD_TLS_DIR}/tls.crt"
        assert env[contract.ENV_ETCD_KEY] == f"{names.ETCD_TLS_DIR}/tls.key"
        assert env[contract.ENV_ETCD_USER] == {"secretKeyRef": {"name": "auth", "key": "username"}}
        assert env[contract.ENV_ETCD_PASSWORD] == {
            "secretKeyRef": {"name": "auth", "key": "password"}
        }
        assert {
            "name": names.ETCD_TLS_VOLUME,
            "mountPath": names.ETCD_TLS_DIR,
            "readOnly": True,
        } in c["volumeMounts"]
    (vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == names.ETCD_TLS_VOLUME]
    assert vol["secret"]["secretName"] == "tls"
    assert "auth" not in json.dumps(pod).replace('"auth"', "")  # only referenced by name


def test_default_etcd_secrets_apply_without_spec_etcd() -> None:
    defaults = OperatorDefaults(
        etcd_endpoints=("x:1",), etcd_tls_secret="chart-tls", etcd_auth_secret="chart-auth"
    )
    worker, _ = containers(render_pod(make_job(), Slot("worker", 0), defaults=defaults))
    env = env_of(worker)
    assert env[contract.ENV_ETCD_ENDPOINTS] == "x:1"
    assert env[contract.ENV_ETCD_PASSWORD]["secretKeyRef"]["name"] == "chart-auth"


RD = {"type": "RuntimeDefault"}
DROP_ALL = {"drop": ["ALL"]}
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": DROP_ALL}
LOCALHOST = {"type": "Localhost", "localhostProfile": "p"}
SECURITY = [
    # the template's pod / worker securityContext -> the rendered ones
    pytest.param(None, None, {"runAsNonRoot": True, "seccompProfile": RD}, RESTRICTED,
                 id="nothing-set-restricted"),
    pytest.param({"runAsUser": 0}, None, {"runAsUser": 0, "seccompProfile": RD}, RESTRICTED,
                 id="root-image-pod-level"),
    pytest.param(None, {"runAsUser": 0}, {"seccompProfile": RD},
                 {"runAsUser": 0, **RESTRICTED}, id="root-image-container-level"),
    pytest.param({"runAsNonRoot": False}, None, {"runAsNonRoot": False, "seccompProfile": RD},
                 RESTRICTED, id="run-as-non-root-false"),
    pytest.param({"runAsUser": 1000, "seccompProfile": LOCALHOST},
                 {"capabilities": {"add": ["SYS_PTRACE"], "drop": ["NET_RAW"]}},
                 {"runAsUser": 1000, "seccompProfile": LOCALHOST},
                 {"allowPrivilegeEscalation": False,
                  "capabilities": {"add": ["SYS_PTRACE"], "drop": ["NET_RAW"]}},
                 id="merged-field-by-field"),
    pytest.param(None, {"privileged": True}, {"runAsNonRoot": True, "seccompProfile": RD},
                 {"privileged": True, "capabilities": DROP_ALL}, id="privileged"),
    pytest.param(None, {"capabilities": {"add": ["CAP_SYS_ADMIN"]}},
                 {"runAsNonRoot": True, "seccompProfile": RD},
                 {"capabilities": {"add": ["CAP_SYS_ADMIN"], "drop": ["ALL"]}}, id="sys-admin"),
    pytest.param(None, {"allowPrivilegeEscalation": True},
                 {"runAsNonRoot": True, "seccompProfile": RD},
                 {"allowPrivilegeEscalation": True, "capabilities": DROP_ALL},
                 id="escalation-allowed"),
]  # fmt: skip


@pytest.mark.parametrize(("pod_sc", "worker_sc", "want_pod", "want_worker"), SECURITY)
def test_the_templates_security_context_wins(
    pod_sc: dict[str, Any] | None,
    worker_sc: dict[str, Any] | None,
    want_pod: dict[str, Any],
    want_worker: dict[str, Any],
) -> None:
    worker: dict[str, Any] = {"name": "worker", "image": "pytorch/pytorch", "command": ["x"]}
    if worker_sc is not None:
        worker["securityContext"] = worker_sc
    tspec: dict[str, Any] = {"containers": [worker]}
    if pod_sc is not None:
        tspec["securityContext"] = pod_sc
    job = make_job(roles={"worker": {"replicas": 1, "template": {"spec": tspec}}})
    pod = render_pod(job, Slot("worker", 0), defaults=DEFAULTS)
    assert pod["spec"]["securityContext"] == want_pod
    got_worker, sidecar = containers(pod)
    assert got_worker["securityContext"] == want_worker
    # rpcjob's own sidecar always runs restricted, as a non-root user.
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": DEFAULTS.sidecar_user, "readOnlyRootFilesystem": True,
        **RESTRICTED,
    }  # fmt: skip


def test_restricted_defaults_when_the_user_sets_nothing() -> None:
    pod = render_pod(make_job(), Slot("worker", 0), defaults=DEFAULTS)
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    worker, _ = containers(pod)
    assert worker["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


@pytest.mark.parametrize(
    ("gpus", "tmpl_limit", "want_limit", "want_env"),
    [
        (2, None, "2", "2"),
        (None, 4, 4, "4"),
        (None, None, None, ""),
    ],
)
def test_gpu_request(
    gpus: int | None, tmpl_limit: int | None, want_limit: Any, want_env: str
) -> None:
    worker_c: dict[str, Any] = {"name": "worker", "image": "i", "command": ["x"]}
    if tmpl_limit is not None:
        worker_c["resources"] = {"limits": {names.GPU_RESOURCE: tmpl_limit}}
    role: dict[str, Any] = {"replicas": 1, "template": {"spec": {"containers": [worker_c]}}}
    if gpus is not None:
        role["gpus"] = gpus
    pod = render_pod(make_job(roles={"worker": role}), Slot("worker", 0), defaults=DEFAULTS)
    worker, _ = containers(pod)
    limits = (worker.get("resources") or {}).get("limits") or {}
    assert limits.get(names.GPU_RESOURCE) == want_limit
    assert env_of(worker)[contract.ENV_GPUS] == want_env


def test_service_account_default_only_when_template_names_none() -> None:
    d = OperatorDefaults(job_service_account="rpcjob-job")
    assert (
        render_pod(make_job(), Slot("worker", 0), defaults=d)["spec"]["serviceAccountName"]
        == "rpcjob-job"
    )
    job = make_job(
        roles={
            "worker": {
                "replicas": 1,
                "template": {
                    "spec": {
                        "serviceAccountName": "mine",
                        "containers": [{"name": "w", "image": "i", "command": ["x"]}],
                    }
                },
            }
        }
    )
    assert render_pod(job, Slot("worker", 0), defaults=d)["spec"]["serviceAccountName"] == "mine"


def test_render_is_pure() -> None:
    job = make_job()
    before = copy.deepcopy(job.roles["worker"].template)
    a = render_pod(job, Slot("worker", 0), defaults=DEFAULTS)
    b = render_pod(job, Slot("worker", 0), defaults=DEFAULTS)
    assert a == b and job.roles["worker"].template == before


def test_rendered_objects_pass_the_kubernetes_schemas() -> None:
    job = make_job(
        etcd={"endpoints": ["a:1"], "tlsSecretRef": {"name": "t"}, "authSecretRef": {"name": "u"}}
    )
    d = OperatorDefaults(metrics_namespace_selector={"name": "monitoring"})
    for obj in (
        render_pod(job, Slot("worker", 3), defaults=d),
        render_service(job),
        render_network_policy(job, defaults=d),
    ):
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


def test_headless_service() -> None:
    svc = render_service(make_job())
    assert svc["metadata"]["name"] == "demo"
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    spec = svc["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    assert spec["selector"] == {contract.LABEL_JOB_NAME: "demo", contract.LABEL_JOB_UID: "uid-1"}


def test_network_policy_admits_only_the_job() -> None:
    np = render_network_policy(make_job())
    sel = {"matchLabels": {contract.LABEL_JOB_NAME: "demo", contract.LABEL_JOB_UID: "uid-1"}}
    assert np["spec"] == {
        "podSelector": sel,
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": sel}]}],
    }


def test_network_policy_metrics_peer_gets_only_the_metrics_port() -> None:
    d = OperatorDefaults.from_env({ENV_METRICS_NAMESPACE_SELECTOR: '{"name": "monitoring"}'})
    np = render_network_policy(make_job(), defaults=d)
    assert np["spec"]["ingress"][1] == {
        "from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": contract.SIDECAR_HTTP_PORT}],
    }


def test_defaults_from_env() -> None:
    d = OperatorDefaults.from_env(
        {
            contract.ENV_DEFAULT_ETCD_ENDPOINTS: "a:1, b:2,",
            contract.ENV_DEFAULT_ETCD_TLS_SECRET: "",
            contract.ENV_DEFAULT_ETCD_AUTH_SECRET: "au",
            contract.ENV_SIDECAR_IMAGE: "img:2",
            contract.ENV_SIDECAR_IMAGE_PULL_POLICY: "Always",
            contract.ENV_JOB_SERVICE_ACCOUNT: "sa",
        }
    )
    assert d.etcd_endpoints == ("a:1", "b:2") and d.etcd_tls_secret is None
    assert (d.etcd_auth_secret, d.sidecar_image, d.image_pull_policy, d.job_service_account) == (
        "au",
        "img:2",
        "Always",
        "sa",
    )
    with pytest.raises(ValueError, match="must be a JSON object of labels"):
        OperatorDefaults.from_env({ENV_METRICS_NAMESPACE_SELECTOR: "[1]"})


def test_rendered_env_resolves_like_the_kubelet() -> None:
    """The rendered env resolves with the kubelet's rules (localexec.containers, which the
    process kubelet and `rpcjob run` use): downward API, Secret keys, $(VAR) expansion."""
    job = make_job(etcd={"endpoints": ["a:1"], "authSecretRef": {"name": "auth"}})
    pod = render_pod(job, Slot("worker", 2), defaults=DEFAULTS)
    worker, sidecar = containers(pod)
    info = PodInfo(name="demo-worker-2", namespace="ns", uid="u", node_name="local",
                   pod_ip="127.0.0.7")  # fmt: skip
    secrets = {"auth": {"username": "u", "password": "p"}}

    def lookup(kind: str, name: str, key: str) -> str | None:
        return secrets.get(name, {}).get(key) if kind == "secret" else None

    env = resolve_env(worker, info, lookup)
    assert env[contract.ENV_POD_IP] == "127.0.0.7" and env[contract.ENV_ETCD_PASSWORD] == "p"
    assert env["MY_VAR"] == "worker_2-x"
    senv = resolve_env(sidecar, info, lookup)
    assert senv[contract.ENV_HTTP_ADDR] == f"127.0.0.7:{contract.SIDECAR_HTTP_PORT}"
    secrets["auth"].pop("password")
    with pytest.raises(ContainerConfigError, match="secret 'auth' key 'password', which does not"):
        resolve_env(worker, info, lookup)
