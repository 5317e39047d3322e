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
        job(
            rpc={"timeoutSeconds": 30, "numWorkerThreads": 8, "deviceMaps": "off"},
            successPolicy={"role": "worker", "operator": "Any"},
            runPolicy={
                "backoffLimit": 0,
                "activeDeadlineSeconds": 60,
                "ttlSecondsAfterFinished": 0,
                "suspend": True,
            },
        ),
        id="policies",
    ),
    pytest.param(with_role(job(), "worker", replicas=0, minReplicas=0), id="zero-replicas"),
]


@pytest.mark.parametrize("obj", GOOD)
def test_schema_accepts(crd: dict[str, Any], obj: dict[str, Any]) -> None:
    assert crdschema.validate(crd, obj) == []


BAD = [
    pytest.param(
        with_role(job(), "Bad-role", replicas=1),
        'spec.roles: Invalid value: "object": role names must be lowercase letters and digits',
        id="role-name",
    ),
    pytest.param(
        with_role(job(), "a" * 21, replicas=1), "at most 20 characters", id="role-too-long"
    ),
    pytest.param(
        {**job(), "spec": {"roles": {"ps": job()["spec"]["roles"]["worker"]}}},
        "a role named 'worker' is required",
        id="no-worker-role",
    ),
    pytest.param(
        with_role(job(), "worker", minReplicas=3),
        'spec.roles.worker.minReplicas: Invalid value: "object": minReplicas must be <= replicas',
        id="min-above-replicas",
    ),
    pytest.param(
        with_role(job(), "worker", replicas=5),
        "replicas must be <= maxReplicas",
        id="replicas-above-max",
    ),
    pytest.param(
        with_role(job(), "worker", replicas=5000, maxReplicas=None),
        'spec.roles.worker.replicas: Invalid value: "object": a role without maxReplicas has '
        "at most 1000 replicas (a ceiling against a typo such as replicas: 5000): set "
        "maxReplicas to the ceiling you mean",
        id="replicas-ceiling-without-max",
    ),
    pytest.param(
        with_role(job(), "worker", replicas=-1),
        "spec.roles.worker.replicas: Invalid "
        "value: -1: spec.roles.worker.replicas in body should be greater than or equal "
        "to 0",
        id="negative-replicas",
    ),
    pytest.param(
        with_role(job(), "worker", replicas="two"),
        "spec.roles.worker.replicas: "
        'Invalid value: "string": spec.roles.worker.replicas in body must be of type '
        'integer: "string"',
        id="replicas-type",
    ),
    pytest.param(
        with_role(job(), "worker", restartPolicy="Sometimes"),
        'spec.roles.worker.restartPolicy: Unsupported value: "Sometimes": supported '
        'values: "OnFailure", "Never", "Always"',
        id="restart-policy",
    ),
    pytest.param(
        with_role(job(), "worker", template=None),
        "spec.roles.worker.template: Required value",
        id="no-template",
    ),
    pytest.param(
        with_role(job(), "worker", template={"spec": {"containers": []}}),
        "spec.roles.worker.template.spec.containers in body should have at least 1 items",
        id="no-containers",
    ),
    pytest.param(
        job(rpc={"deviceMaps": "maybe"}),
        'spec.rpc.deviceMaps: Unsupported value: "maybe"',
        id="device-maps",
    ),
    pytest.param(
        job(rpc={"transport": "ibv"}),
        'spec.rpc.transport: Unsupported value: "ibv"',
        id="transport",
    ),
    pytest.param(
        job(etcd={"endpoints": ["etcd"]}),
        "spec.etcd.endpoints[0] in body should match",
        id="endpoint-without-port",
    ),
    pytest.param(
        job(successPolicy={"role": "driver"}),
        "spec.successPolicy.role: Invalid "
        'value: "object": spec.successPolicy.role must name a role',
        id="success-role",
    ),
    pytest.param(
        job(runPolicy={"backoffLimit": -1}),
        "spec.runPolicy.backoffLimit in body should be greater than or equal to 0",
        id="backoff",
    ),
    pytest.param(job(surprise=True), 'unknown field "spec.surprise"', id="unknown-field"),
    pytest.param(
        with_role(job(), "worker", replicaz=3),
        'unknown field "spec.roles.worker.replicaz"',
        id="unknown-role-field",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), BAD)
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
    pytest.param(job(), with_role(job(), "worker", replicas=4), None, id="scale-up"),
    pytest.param(job(), with_role(job(), "worker", replicas=1), None, id="scale-down"),
    pytest.param(job(), job(runPolicy={"suspend": True}), None, id="suspend"),
    pytest.param(
        job(),
        with_role(job(), "worker", maxReplicas=8),
        "maxReplicas is immutable",
        id="max-changed",
    ),
    pytest.param(
        job(),
        with_role(job(), "worker", maxReplicas=None, replicas=2),
        "maxReplicas is immutable",
        id="max-removed",
    ),
    pytest.param(
        job(),
        with_role(job(), "ps", replicas=1),
        "roles cannot be added or removed",
        id="role-added",
    ),
    pytest.param(
        with_role(job(), "ps", replicas=1),
        job(),
        "roles cannot be added or removed",
        id="role-removed",
    ),
    pytest.param(
        with_role(job(), "ps", replicas=1, maxReplicas=None, minReplicas=None),
        with_role(job(), "ps", replicas=2, maxReplicas=None, minReplicas=None),
        "this role has no maxReplicas, so it is fixed-size",
        id="fixed-role-scaled",
    ),
    pytest.param(
        job(etcd={"endpoints": ["a:2379"]}),
        job(etcd={"endpoints": ["b:2379"]}),
        "spec.etcd is immutable",
        id="etcd-changed",
    ),
    pytest.param(
        job(), job(etcd={"endpoints": ["b:2379"]}), "spec.etcd is immutable", id="etcd-added"
    ),
    pytest.param(
        job(rpc={"timeoutSeconds": 30}),
        job(rpc={"timeoutSeconds": 31}),
        "spec.rpc is immutable",
        id="rpc-changed",
    ),
    pytest.param(
        job(successPolicy={"role": "worker"}),
        job(),
        "spec.successPolicy is immutable",
        id="success-policy-removed",
    ),
    pytest.param(
        with_role(job(), "worker", gpus=1),
        with_role(job(), "worker", gpus=2),
        "gpus is immutable",
        id="gpus-changed",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), TRANSITIONS)
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
