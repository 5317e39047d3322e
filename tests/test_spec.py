"""parse_job: typed spec, defaults, and every check (the CRD's and beyond it) with its message.

Messages from the CRD are the API server's (what `kubectl apply` prints), without its
`Invalid value: "object":` part; the checks beyond the CRD word their own."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from rpcjob import contract
from rpcjob_operator.localexec.jobfile import apply_set
from rpcjob_operator.spec import InvalidSpec, parse_job, parse_time


def container(**extra: Any) -> dict[str, Any]:
    return {"name": "worker", "image": "img", "command": ["python", "-m", "app"], **extra}


def role(replicas: int = 2, **extra: Any) -> dict[str, Any]:
    return {"replicas": replicas, "template": {"spec": {"containers": [container()]}}, **extra}


def job(name: str = "demo", **spec: Any) -> dict[str, Any]:
    spec.setdefault("roles", {"worker": role(maxReplicas=4)})
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "u-1",
            "generation": 3,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec,
    }


def test_parse_full_spec() -> None:
    obj = job(
        roles={
            "worker": role(3, minReplicas=2, maxReplicas=8, gpus=1, restartPolicy="Always"),
            "ps": role(1),
        },
        etcd={
            "endpoints": ["e:2379"],
            "tlsSecretRef": {"name": "t"},
            "authSecretRef": {"name": "a"},
        },
        rpc={
            "timeoutSeconds": 12.5,
            "numWorkerThreads": 4,
            "deviceMaps": "off",
            "transport": "shm",
        },
        successPolicy={"role": "ps", "operator": "Any"},
        runPolicy={
            "backoffLimit": 2,
            "activeDeadlineSeconds": 60,
            "ttlSecondsAfterFinished": 5,
            "suspend": True,
        },
    )
    j = parse_job(obj)
    assert list(j.roles) == ["ps", "worker"]
    w = j.roles["worker"]
    assert (w.replicas, w.min_replicas, w.max_replicas) == (3, 2, 8)
    assert (w.restart_policy, w.gpus, w.worker_container) == ("Always", 1, "worker")
    ps = j.roles["ps"]
    # fixed-size role: max = replicas, min defaults to 1, restartPolicy OnFailure
    assert (ps.max_replicas, ps.min_replicas, ps.restart_policy) == (1, 1, "OnFailure")
    assert j.slots() == {"ps": 1, "worker": 8}
    assert (j.etcd.endpoints, j.etcd.tls_secret, j.etcd.auth_secret) == (("e:2379",), "t", "a")
    assert (j.rpc.timeout_seconds, j.rpc.num_worker_threads, j.rpc.device_maps) == (12.5, 4, "off")
    assert j.rpc.transport == "shm"
    assert (j.success_policy.role, j.success_policy.operator) == ("ps", "Any")
    rp = j.run_policy
    assert (
        rp.backoff_limit,
        rp.active_deadline_seconds,
        rp.ttl_seconds_after_finished,
        rp.suspend,
    ) == (2, 60, 5, True)
    assert (j.meta.name, j.meta.namespace, j.meta.uid, j.meta.generation) == (
        "demo",
        "ns",
        "u-1",
        3,
    )


def test_defaults() -> None:
    j = parse_job(job(roles={"worker": role(0, maxReplicas=2)}))
    assert j.roles["worker"].min_replicas == 0  # no minimum above replicas
    assert j.etcd.endpoints == () and j.etcd.tls_secret is None
    assert (j.rpc.timeout_seconds, j.rpc.num_worker_threads, j.rpc.device_maps) == (
        contract.DEFAULT_RPC_TIMEOUT,
        contract.DEFAULT_RPC_THREADS,
        "auto",
    )
    assert j.rpc.transport == "tcp"  # no busy-polling shm reactor unless asked for
    assert j.success_policy.role is None and j.run_policy.backoff_limit == 6
    assert not j.run_policy.suspend


def test_gpus_from_the_template_and_worker_by_name() -> None:
    sidecar_like = {"name": "logs", "image": "busybox"}
    worker = container(resources={"limits": {"nvidia.com/gpu": "2"}})
    obj = job(
        roles={
            "worker": {"replicas": 1, "template": {"spec": {"containers": [sidecar_like, worker]}}}
        }
    )
    r = parse_job(obj).roles["worker"]
    assert (r.gpus, r.worker_container) == (2, "worker")


def test_parse_does_not_alias_the_template() -> None:
    obj = job()
    j = parse_job(obj)
    obj["spec"]["roles"]["worker"]["template"]["spec"]["containers"][0]["image"] = "changed"
    assert j.roles["worker"].template["spec"]["containers"][0]["image"] == "img"


def _tmpl(**spec: Any) -> dict[str, Any]:
    return {"spec": {"containers": [container()], **spec}}


def _with(obj: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def job_with(assignment: str) -> dict[str, Any]:
    """job() with one field set as `rpcjob run --set` sets it: ``rpc.transport=ibv``."""
    return apply_set(job(), assignment)


W = ["spec", "roles", "worker"]
C0 = [*W, "template", "spec", "containers", 0]
INVALID = [
    (
        "role-name",
        job(roles={"Worker": role()}),
        "spec.roles: role names must be lowercase letters and digits, start with a letter and "
        "be at most 20 characters (torch RPC worker names cannot contain '-' or ','): 'Worker'",
    ),
    (
        "no-worker",
        job(roles={"ps": role(1)}),
        "spec.roles: a role named 'worker' is required",
    ),
    (
        "min",
        job_with("roles.worker.minReplicas=3"),
        "spec.roles.worker.minReplicas: minReplicas must be <= replicas: lower minReplicas or "
        "raise replicas",
    ),
    (
        "max",
        job_with("roles.worker.replicas=5"),
        "spec.roles.worker.replicas: replicas must be <= maxReplicas (slots and device maps",
    ),
    (
        "replicas-type",
        _with(job(), [*W, "replicas"], "2"),
        'spec.roles.worker.replicas: must be of type integer: "string"',
    ),
    (
        "restart-policy",
        job_with("roles.worker.restartPolicy=Sometimes"),
        'spec.roles.worker.restartPolicy: Unsupported value: "Sometimes": supported values: '
        '"OnFailure", "Never", "Always"',
    ),
    (
        "pod-name-too-long",
        job(name="x" * 56),
        "would be 65 characters; a pod hostname is at most 63: shorten the job name (56 chars)",
    ),
    (
        "job-name-dns",
        job(name="9lives"),
        "metadata.name: '9lives' cannot name the job's headless Service",
    ),
    (
        "rank-space",
        job(roles={"worker": role(1, maxReplicas=20000), "ps": role(1, maxReplicas=20000)}),
        "maxReplicas add up to 40000, more than torch's int16 rank space (32768)",
    ),
    (
        "no-command",
        _with(job(), [*C0, "command"], None),
        "spec.roles.worker.template.spec."
        "containers[0].command: Required value: the worker needs an explicit command",
    ),
    (
        "command-string",
        _with(job(), [*C0, "command"], "python app.py"),
        "containers[0].command: Required value",
    ),
    (
        "no-image",
        _with(job(), [*C0, "image"], None),
        "containers[0].image: Required value",
    ),
    (
        "which-worker",
        _with(
            job(),
            [*W, "template", "spec", "containers"],
            [container(name="a"), container(name="b")],
        ),
        "the template has 2 containers and none is named 'worker'",
    ),
    (
        "no-template",
        job_with("roles.worker.template=null"),
        'spec.roles.worker.template: must be of type object: "null"',
    ),
    (
        "no-containers",
        _with(job(), [*W, "template"], {"spec": {"containers": []}}),
        "spec.roles.worker.template.spec.containers: should have at least 1 items",
    ),
    (
        "gpu-mismatch",
        _with(_with(job(), [*W, "gpus"], 2), [*C0, "resources"], {"limits": {"nvidia.com/gpu": 1}}),
        "the template asks for 1 GPUs but the role's gpus is 2",
    ),
    (
        "gpu-requests-limits",
        _with(
            job(),
            [*C0, "resources"],
            {"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 2}},
        ),
        "requests (2) and limits (1) differ",
    ),
    (
        "gpu-fraction",
        _with(job(), [*C0, "resources"], {"limits": {"nvidia.com/gpu": "1.5"}}),
        "must be a whole number of GPUs",
    ),
    (
        "reserved-env",
        _with(job(), [*C0, "env"], [{"name": contract.ENV_ETCD_ENDPOINTS, "value": "x"}]),
        "containers[0].env[0].name: 'RPCJOB_ETCD_ENDPOINTS' is set by rpcjob",
    ),
    (
        "volume",
        _with(job(), [*W, "template"], _tmpl(volumes=[{"name": "rpcjob-socket"}])),
        "volumes[0].name: 'rpcjob-socket' is a volume rpcjob injects",
    ),
    (
        "mount",
        _with(
            job(), [*C0, "volumeMounts"], [{"name": "v", "mountPath": contract.SOCKET_DIR + "/"}]
        ),
        "volumeMounts[0].mountPath: /var/run/rpcjob is where rpcjob mounts",
    ),
    (
        "sidecar-name",
        _with(
            job(),
            [*W, "template"],
            _tmpl(initContainers=[{"name": contract.SIDECAR_CONTAINER, "image": "x"}]),
        ),
        "initContainers[0].name: 'rpcjob-sidecar' is the container rpcjob injects",
    ),
    (
        "pod-restart",
        _with(job(), [*W, "template"], _tmpl(restartPolicy="OnFailure")),
        "template.spec.restartPolicy: rpcjob replaces pods itself",
    ),
    (
        "reserved-label",
        _with(job(), [*W, "template", "metadata"], {"labels": {contract.LABEL_ROLE: "x"}}),
        "labels under rpcjob.dev/ are set by rpcjob",
    ),
    (
        "always-needs-success-role",
        job(roles={"worker": role(2, maxReplicas=4, restartPolicy="Always")}),
        "spec.successPolicy.role: role 'worker' has restartPolicy Always and never finishes",
    ),
    (
        "success-role-always",
        job(
            roles={"worker": role(2, maxReplicas=4, restartPolicy="Always")},
            successPolicy={"role": "worker"},
        ),
        "role 'worker' has restartPolicy Always, so its pods never finish",
    ),
    (
        "success-role-missing",
        job_with("successPolicy.role=driver"),
        "spec.successPolicy.role: spec.successPolicy.role must name a role in spec.roles (there is "
        "no role 'driver')",
    ),
    (
        "success-operator",
        job_with("successPolicy.operator=Some"),
        'spec.successPolicy.operator: Unsupported value: "Some": supported values: "All", "Any"',
    ),
    (
        "device-maps",
        job_with("rpc.deviceMaps=on"),
        'spec.rpc.deviceMaps: Unsupported value: "on"',
    ),
    (
        "transport",
        job_with("rpc.transport=ibv"),
        'spec.rpc.transport: Unsupported value: "ibv"',
    ),
    (
        "etcd-endpoints",
        job_with("etcd.endpoints=e:2379"),
        'spec.etcd.endpoints: must be of type array: "string"',
    ),
    (
        "etcd-tls-ref",
        job(etcd={"tlsSecretRef": {}}),
        "spec.etcd.tlsSecretRef.name: Required value",
    ),
    (
        "backoff",
        job_with("runPolicy.backoffLimit=-2"),
        "spec.runPolicy.backoffLimit: should be greater than or equal to 0, got -2",
    ),
    ("no-spec", {"metadata": {"name": "x"}}, "spec: Required value"),
    ("no-roles", job(roles={}), "spec.roles: should have at least 1 properties, got 0"),
]


@pytest.mark.parametrize(("obj", "expected"), [pytest.param(o, e, id=i) for i, o, e in INVALID])
def test_invalid_specs_name_the_field_and_fix(obj: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_job(obj)
    assert expected in str(info.value), str(info.value)
    assert info.value.reason == "InvalidSpec" and info.value.errors


def test_every_error_is_reported_at_once() -> None:
    obj = _with(_with(job(), [*W, "minReplicas"], 3), [*C0, "command"], None)
    with pytest.raises(InvalidSpec) as info:
        parse_job(obj)
    paths = {e.path for e in info.value.errors}
    assert {
        "spec.roles.worker.minReplicas",  # the CRD's rule (minReplicas <= replicas)
        "spec.roles.worker.template.spec.containers[0].command",
    } <= paths


def test_user_rpcjob_prefixed_env_is_allowed() -> None:
    obj = _with(
        job(),
        [*C0, "env"],
        [
            {"name": "RPCJOB_EXAMPLE_STEPS", "value": "3"},
            {"name": contract.ENV_TEST_HOOK, "value": "kill"},
        ],
    )
    parse_job(obj)


def test_parse_time() -> None:
    assert parse_time(None) is None and parse_time("") is None
    assert parse_time("2026-01-02T03:04:05Z") == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    naive = dt.datetime(2026, 1, 1)
    assert parse_time(naive) == naive.replace(tzinfo=dt.UTC)
