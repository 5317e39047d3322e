"""The RpcJob CRD: it loads, is structural, and its schema + CEL rules accept good and reject
bad objects the way the API server would (checked offline with crdschema/crdcel)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest

from rpcjob import contract
from rpcjob_operator import crdcel, crdschema
from rpcjob_operator.localexec.jobfile import apply_set

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "crds" / "rpcjob.dev_rpcjobs.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdschema.load_crd(CRD_PATH)


def job(**spec_overrides: Any) -> dict[str, Any]:
    container = {"name": "worker", "image": "img", "command": ["python", "-m", "app"]}
    spec: dict[str, Any] = {
        "roles": {
            "worker": {
                "replicas": 2,
                "minReplicas": 1,
                "maxReplicas": 4,
                "template": {"spec": {"containers": [container]}},
            },
        },
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.KIND,
        "metadata": {"name": "demo"},
        "spec": spec,
    }


def with_role(obj: dict[str, Any], role: str, **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    base = copy.deepcopy(out["spec"]["roles"].get(role) or out["spec"]["roles"]["worker"])
    base.update(fields)
    for k in [k for k, v in fields.items() if v is None]:
        del base[k]
    out["spec"]["roles"][role] = base
    return out


def job_with(*assignments: str) -> dict[str, Any]:
    """job() with fields set as `rpcjob run --set` sets them: ``rpc.transport=ibv``."""
    obj = job()
    for assignment in assignments:
        obj = apply_set(obj, assignment)
    return obj


# --- the file -----------------------------------------------------------------------------
def test_crd_identity_and_subresources(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == contract.CRD_NAME
    spec = crd["spec"]
    assert spec["group"] == contract.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == contract.KIND
    assert spec["names"]["shortNames"] == [contract.SHORT_NAME]
    (version,) = spec["versions"]
    assert version["name"] == contract.VERSION and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.roles.worker.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Ready": ".status.ready",
        "Restarts": ".status.restarts",
        "State": ".status.state",
        "Age": ".metadata.creationTimestamp",
    }


def test_crd_is_a_valid_apiextensions_object(crd: dict[str, Any]) -> None:
    # The real CustomResourceDefinition schema (offline), strict: no misspelt keys.
    kubernetes_validate.validate(crd, "1.37.0", strict=True)


def _structural_problems(schema: dict[str, Any], path: str, preserved: bool) -> list[str]:
    out: list[str] = []
    if "type" not in schema and not preserved:
        out.append(f"{path}: no type")
    if schema.get("type") == "object" and not preserved and path != "":
        has_shape = "properties" in schema or "additionalProperties" in schema
        preserves = schema.get("x-kubernetes-preserve-unknown-fields")
        if not has_shape and not preserves and path != ".metadata":
            out.append(f"{path}: object without properties (would prune everything)")
    inner = preserved or bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    for key, sub in schema.get("properties", {}).items():
        out += _structural_problems(sub, f"{path}.{key}", inner)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out += _structural_problems(schema[key], f"{path}[*]", inner)
    return out


def test_schema_is_structural_and_only_templates_preserve_unknown_fields(
    crd: dict[str, Any],
) -> None:
    schema = crdschema.schema_for(crd)
    assert _structural_problems(schema, "", False) == []
    preserving: list[str] = []

    def walk(s: dict[str, Any], path: str) -> None:
        if s.get("x-kubernetes-preserve-unknown-fields"):
            preserving.append(path)
            return
        for k, sub in s.get("properties", {}).items():
            walk(sub, f"{path}.{k}")
        for k in ("items", "additionalProperties"):
            if isinstance(s.get(k), dict):
                walk(s[k], f"{path}[*]")

    walk(schema, "")
    assert preserving == [".spec.roles[*].template"]


def _compile_errors(schema: dict[str, Any], path: str = "") -> list[str]:
    """Rules that do not compile (a CRD bug the API server would reject at install)."""
    env, out = celpy.Environment(), []
    for rule in schema.get("x-kubernetes-validations", []):
        for key in [k for k in ("rule", "messageExpression") if k in rule]:
            try:
                env.program(env.compile(rule[key]))
            except Exception as e:  # celpy raises several parse error types
                out.append(f"{path or '<root>'}: {key} {rule[key]!r} does not compile: {e}")
    for key, sub in schema.get("properties", {}).items():
        out += _compile_errors(sub, f"{path}.{key}" if path else key)
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), dict):
            out += _compile_errors(schema[key], f"{path}[*]")
    return out


def test_every_cel_rule_compiles(crd: dict[str, Any]) -> None:
    assert _compile_errors(crdschema.schema_for(crd)) == []


def test_load_crd_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(crdschema.CRDError, match="cannot read CRD"):
        crdschema.load_crd(tmp_path / "missing.yaml")
    bad = tmp_path / "cm.yaml"
    bad.write_text("kind: ConfigMap\n")
    with pytest.raises(crdschema.CRDError, match="is not a CustomResourceDefinition"):
        crdschema.load_crd(bad)


# --- create: accept / reject --------------------------------------------------------------
GOOD = [
    pytest.param(job(), id="minimal"),
    pytest.param(
        with_role(job(), "ps", replicas=1, minReplicas=None, maxReplicas=None), id="fixed-size-role"
    ),
    pytest.param(
        job(
            etcd={
                "endpoints": ["etcd-0.etcd:2379", "https://10.0.0.1:2379"],
                "tlsSecretRef": {"name": "etcd-tls"},
                "authSecretRef": {"name": "etcd-auth"},
            }
        ),
        id="etcd",
    ),
    pytest.param(
        job_with(
            "rpc.timeoutSeconds=30",
            "rpc.numWorkerThreads=8",
            "rpc.deviceMaps=off",
            "successPolicy.role=worker",
            "successPolicy.operator=Any",
            "runPolicy.backoffLimit=0",
            "runPolicy.activeDeadlineSeconds=60",
            "runPolicy.ttlSecondsAfterFinished=0",
            "runPolicy.suspend=true",
        ),
        id="policies",
    ),
    pytest.param(with_role(job(), "worker", replicas=0, minReplicas=0), id="zero-replicas"),
]


@pytest.mark.parametrize("obj", GOOD)
def test_schema_accepts(crd: dict[str, Any], obj: dict[str, Any]) -> None:
    assert crdschema.validate(crd, obj) == []


BAD = [
    (
        "role-name",
        with_role(job(), "Bad-role", replicas=1),
        'spec.roles: Invalid value: "object": role names must be lowercase letters and digits',
    ),
    ("role-too-long", with_role(job(), "a" * 21, replicas=1), "at most 20 characters"),
    (
        "no-worker-role",
        {**job(), "spec": {"roles": {"ps": job()["spec"]["roles"]["worker"]}}},
        "a role named 'worker' is required",
    ),
    (
        "min-above-replicas",
        job_with("roles.worker.minReplicas=3"),
        'spec.roles.worker.minReplicas: Invalid value: "object": minReplicas must be <= replicas',
    ),
    (
        "replicas-above-max",
        job_with("roles.worker.replicas=5"),
        "replicas must be <= maxReplicas",
    ),
    (
        "replicas-ceiling-without-max",
        with_role(job(), "worker", replicas=5000, maxReplicas=None),
        'spec.roles.worker.replicas: Invalid value: "object": a role without maxReplicas has '
        "at most 1000 replicas (a ceiling against a typo such as replicas: 5000): set "
        "maxReplicas to the ceiling you mean",
    ),
    (
        "negative-replicas",
        job_with("roles.worker.replicas=-1"),
        "spec.roles.worker.replicas: Invalid "
        "value: -1: spec.roles.worker.replicas in body should be greater than or equal "
        "to 0",
    ),
    (
        "replicas-type",
        job_with("roles.worker.replicas=two"),
        "spec.roles.worker.replicas: "
        'Invalid value: "string": spec.roles.worker.replicas in body must be of type '
        'integer: "string"',
    ),
    (
        "restart-policy",
        job_with("roles.worker.restartPolicy=Sometimes"),
        'spec.roles.worker.restartPolicy: Unsupported value: "Sometimes": supported '
        'values: "OnFailure", "Never", "Always"',
    ),
    (
        "no-template",
        with_role(job(), "worker", template=None),
        "spec.roles.worker.template: Required value",
    ),
    (
        "no-containers",
        with_role(job(), "worker", template={"spec": {"containers": []}}),
        "spec.roles.worker.template.spec.containers in body should have at least 1 items",
    ),
    (
        "device-maps",
        job_with("rpc.deviceMaps=maybe"),
        'spec.rpc.deviceMaps: Unsupported value: "maybe"',
    ),
    (
        "transport",
        job_with("rpc.transport=ibv"),
        'spec.rpc.transport: Unsupported value: "ibv"',
    ),
    (
        "endpoint-without-port",
        job(etcd={"endpoints": ["etcd"]}),
        "spec.etcd.endpoints[0] in body should match",
    ),
    (
        "success-role",
        job_with("successPolicy.role=driver"),
        "spec.successPolicy.role: Invalid "
        'value: "object": spec.successPolicy.role must name a role',
    ),
    (
        "backoff",
        job_with("runPolicy.backoffLimit=-1"),
        "spec.runPolicy.backoffLimit in body should be greater than or equal to 0",
    ),
    ("unknown-field", job_with("surprise=true"), 'unknown field "spec.surprise"'),
    (
        "unknown-role-field",
        job_with("roles.worker.replicaz=3"),
        'unknown field "spec.roles.worker.replicaz"',
    ),
]


@pytest.mark.parametrize(("obj", "expected"), [pytest.param(o, e, id=i) for i, o, e in BAD])
def test_schema_rejects(crd: dict[str, Any], obj: dict[str, Any], expected: str) -> None:
    errors = crdschema.validate(crd, obj)
    assert any(expected in e for e in errors), errors


def test_template_keeps_unknown_fields_and_prune_drops_others(crd: dict[str, Any]) -> None:
    obj = job(surprise=1)
    tmpl = obj["spec"]["roles"]["worker"]["template"]
    tmpl["spec"]["nodeSelector"] = {"gpu": "h100"}
    tmpl["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    assert crdschema.validate(crd, obj, strict=False) == []
    pruned = crdschema.prune(crd, obj)
    assert "surprise" not in pruned["spec"]
    assert pruned["spec"]["roles"]["worker"]["template"] == tmpl
    assert "surprise" in obj["spec"], "prune must not modify its input"


def test_defaults_are_applied(crd: dict[str, Any]) -> None:
    out = crdschema.apply_defaults(crd, job(rpc={}, runPolicy={}, successPolicy={"role": "worker"}))
    assert out["spec"]["roles"]["worker"]["restartPolicy"] == "OnFailure"
    assert out["spec"]["rpc"] == {
        "timeoutSeconds": 60,
        "numWorkerThreads": 16,
        "deviceMaps": "auto",
        "transport": "tcp",
    }
    assert out["spec"]["runPolicy"] == {"backoffLimit": 6, "suspend": False}
    assert out["spec"]["successPolicy"]["operator"] == "All"


def test_number_fields_compare_as_doubles_in_cel(crd: dict[str, Any]) -> None:
    # rpc.timeoutSeconds is `type: number`; written as an int it must still work in rules.
    old = job(rpc={"timeoutSeconds": 30})
    assert crdschema.validate(crd, job(rpc={"timeoutSeconds": 30}), old) == []


# --- update: transition rules -------------------------------------------------------------
TRANSITIONS = [
    ("scale-up", job(), job_with("roles.worker.replicas=4"), None),
    ("scale-down", job(), job_with("roles.worker.replicas=1"), None),
    ("suspend", job(), job_with("runPolicy.suspend=true"), None),
    ("max-changed", job(), job_with("roles.worker.maxReplicas=8"), "maxReplicas is immutable"),
    (
        "max-removed",
        job(),
        with_role(job(), "worker", maxReplicas=None, replicas=2),
        "maxReplicas is immutable",
    ),
    ("role-added", job(), with_role(job(), "ps", replicas=1), "roles cannot be added or removed"),
    ("role-removed", with_role(job(), "ps", replicas=1), job(), "roles cannot be added or removed"),
    (
        "fixed-role-scaled",
        with_role(job(), "ps", replicas=1, maxReplicas=None, minReplicas=None),
        with_role(job(), "ps", replicas=2, maxReplicas=None, minReplicas=None),
        "this role has no maxReplicas, so it is fixed-size",
    ),
    (
        "etcd-changed",
        job(etcd={"endpoints": ["a:2379"]}),
        job(etcd={"endpoints": ["b:2379"]}),
        "spec.etcd is immutable",
    ),
    ("etcd-added", job(), job(etcd={"endpoints": ["b:2379"]}), "spec.etcd is immutable"),
    (
        "rpc-changed",
        job_with("rpc.timeoutSeconds=30"),
        job_with("rpc.timeoutSeconds=31"),
        "spec.rpc is immutable",
    ),
    (
        "success-policy-removed",
        job_with("successPolicy.role=worker"),
        job(),
        "spec.successPolicy is immutable",
    ),
    (
        "gpus-changed",
        job_with("roles.worker.gpus=1"),
        job_with("roles.worker.gpus=2"),
        "gpus is immutable",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"), [pytest.param(o, n, e, id=i) for i, o, n, e in TRANSITIONS]
)
def test_transition_rules(
    crd: dict[str, Any], old: dict[str, Any], new: dict[str, Any], expected: str | None
) -> None:
    errors = crdschema.validate(crd, new, old)
    if expected is None:
        assert errors == []
    else:
        assert any(expected in e for e in errors), errors
        # Transition rules never fire on create.
        assert not any(expected in e for e in crdschema.validate(crd, new))


def test_status_is_validated_too(crd: dict[str, Any]) -> None:
    obj = job()
    obj["status"] = {
        "state": "Exploded",
        "conditions": [
            {
                "type": "Running",
                "status": "Yes",
                "reason": "x",
                "message": "",
                "lastTransitionTime": "yesterday",
            }
        ],
    }
    errors = crdschema.validate(crd, obj)
    assert 'status.state: Unsupported value: "Exploded"' in " ".join(errors)
    assert any("status.conditions[0].status: Unsupported value" in e for e in errors)
    assert any("lastTransitionTime in body must be of type date-time" in e for e in errors)


def test_int_or_string_and_nullable_handling() -> None:
    tiny = {
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "t"},
        "spec": {
            "versions": [
                {
                    "name": "v1",
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "q": {"x-kubernetes-int-or-string": True},
                                "n": {"type": "string", "nullable": True},
                                "s": {"type": "string"},
                            },
                        }
                    },
                }
            ]
        },
    }
    assert crdschema.validate(tiny, {"q": 1, "n": None}) == []
    assert crdschema.validate(tiny, {"q": "50%"}) == []
    assert crdschema.validate(tiny, {"q": [1]}) == [
        'q: Invalid value: "array": q in body must be of type integer or string: "array"'
    ]
    assert crdschema.validate(tiny, {"s": None}) == [
        's: Invalid value: "null": s in body must be of type string: "null"'
    ]


@pytest.mark.parametrize(
    ("expression", "want"),
    [
        ("'n is ' + string(self.n)", "n is 5"),
        ("'n is ' + self.missing", "n must be small"),  # errors: the static message
        ("''", "n must be small"),  # empty: the static message
    ],
)
def test_message_expression_and_its_fallback(expression: str, want: str) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "x-kubernetes-validations": [
            {"rule": "self.n < 3", "message": "n must be small", "messageExpression": expression}
        ],
    }
    assert crdcel.evaluate_rules(schema, {"n": 5}, path="spec") == [
        f'spec: Invalid value: "object": {want}'
    ]
