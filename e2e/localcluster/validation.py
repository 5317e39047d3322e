"""Validation of custom resources against a CRD version's openAPIV3Schema (+ CEL), and pruning.

Pluggable: the server calls whatever ``Validator`` it was given. The default prefers
``rpcjob_operator.crdschema`` (the project's offline validator, shared with ``rpcjob validate``)
when it provides ``validate(schema, obj, old_obj) -> list[str]`` and ``prune(schema, obj)``;
otherwise it uses the minimal validator below (structural types, required, enum, bounds,
patterns, CEL ``x-kubernetes-validations`` incl. transition rules with ``oldSelf``).
Errors are full field-error texts such as ``spec.x: Invalid value: 3: ...``.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from functools import lru_cache
from typing import Any, Protocol


class Validator(Protocol):
    """What the server needs; ``schema`` is a CRD version's ``openAPIV3Schema``."""

    def validate(
        self, schema: dict[str, Any], obj: dict[str, Any], old_obj: dict[str, Any] | None
    ) -> list[str]: ...

    def prune(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]: ...

    def unknown_fields(self, schema: dict[str, Any], obj: dict[str, Any]) -> list[str]: ...

    def apply_defaults(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]: ...


def _synthetic_crd(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "served.local"},
        "spec": {
            "versions": [{"name": "served", "storage": True, "schema": {"openAPIV3Schema": schema}}]
        },
    }


def _unversioned(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """Without apiVersion (so the CRD-level API picks our single version) and kind (never
    declared in schemas, never pruned by the real server)."""
    if obj is None:
        return None
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


class CrdSchemaValidator:
    """Adapter over ``rpcjob_operator.crdschema`` (CRD-level API: validate(crd, obj, old))."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.name = module.__name__

    def validate(
        self, schema: dict[str, Any], obj: dict[str, Any], old_obj: dict[str, Any] | None
    ) -> list[str]:
        crd = _synthetic_crd(schema)
        return [
            str(e)
            for e in self.module.validate(
                crd, _unversioned(obj), _unversioned(old_obj), strict=False
            )
        ]

    def _keep_version(self, obj: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        head = {k: obj[k] for k in ("apiVersion", "kind") if k in obj}
        return {**head, **out}

    def prune(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        pruned = self.module.prune(_synthetic_crd(schema), _unversioned(obj))
        return self._keep_version(obj, pruned)

    def unknown_fields(self, schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
        return list(self.module.unknown_fields(_synthetic_crd(schema), _unversioned(obj)))

    def apply_defaults(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        out = self.module.apply_defaults(_synthetic_crd(schema), _unversioned(obj))
        return self._keep_version(obj, out)


def default_validator() -> Validator:
    """The project's validator when it is importable, else the minimal one below."""
    try:
        mod = importlib.import_module("rpcjob_operator.crdschema")
    except ImportError:
        return MinimalValidator()
    if all(
        callable(getattr(mod, f, None))
        for f in ("validate", "prune", "unknown_fields", "apply_defaults")
    ):
        return CrdSchemaValidator(mod)
    return MinimalValidator()


# --- the minimal built-in validator -------------------------------------------------------------

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _show(value: Any) -> str:
    """How the real server prints an invalid value: JSON for scalars, the type for containers."""
    if isinstance(value, dict | list):
        return json.dumps(_type_name(value))
    return json.dumps(value)


def _type_ok(schema: dict[str, Any], value: Any) -> bool:
    want = schema.get("type")
    if want is None or (schema.get("x-kubernetes-int-or-string") and isinstance(value, int | str)):
        return True
    if value is None:
        return bool(schema.get("nullable"))
    if want == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if want == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES.get(want, object))


@lru_cache(maxsize=512)
def _cel_program(rule: str) -> Any:
    import celpy  # cel-python; imported lazily so that plain listing needs no CEL

    env = celpy.Environment()
    return env.program(env.compile(rule))


class MinimalValidator:
    name = "e2e.localcluster.validation.MinimalValidator"

    def validate(
        self, schema: dict[str, Any], obj: dict[str, Any], old_obj: dict[str, Any] | None
    ) -> list[str]:
        errors: list[str] = []
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        old = (
            {k: v for k, v in old_obj.items() if k not in ("apiVersion", "kind", "metadata")}
            if old_obj is not None
            else None
        )
        root = {
            **schema,
            "properties": {
                k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"
            },
        }
        self._walk(root, body, old, "", errors, old is not None)
        return errors

    def _walk(
        self,
        schema: dict[str, Any],
        value: Any,
        old: Any,
        path: str,
        errors: list[str],
        has_old: bool,
    ) -> None:
        where = path or "<nil>"
        if not _type_ok(schema, value):
            errors.append(
                f"{where}: Invalid value: {json.dumps(_type_name(value))}: {where} in body must "
                f"be of type {schema.get('type')}: {json.dumps(_type_name(value))}"
            )
            return
        if value is None:
            return
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(json.dumps(v) for v in schema["enum"])
            errors.append(
                f"{where}: Unsupported value: {_show(value)}: supported values: {allowed}"
            )
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                errors.append(
                    f"{where}: Invalid value: {value}: {where} in body should be greater than or "
                    f"equal to {schema['minimum']}"
                )
            if "maximum" in schema and value > schema["maximum"]:
                errors.append(
                    f"{where}: Invalid value: {value}: {where} in body should be less than or "
                    f"equal to {schema['maximum']}"
                )
        if isinstance(value, str):
            if "pattern" in schema and not re.search(schema["pattern"], value):
                errors.append(
                    f"{where}: Invalid value: {_show(value)}: {where} in body should match "
                    f"'{schema['pattern']}'"
                )
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                errors.append(
                    f"{where}: Too long: may not be more than {schema['maxLength']} bytes"
                )
            if "minLength" in schema and len(value) < schema["minLength"]:
                errors.append(
                    f"{where}: Invalid value: {_show(value)}: {where} in body should be at least "
                    f"{schema['minLength']} chars long"
                )
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                errors.append(
                    f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items"
                )
            if "minItems" in schema and len(value) < schema["minItems"]:
                errors.append(
                    f"{where}: Invalid value: {len(value)}: {where} in body should have "
                    f"at least {schema['minItems']} items"
                )
            item_schema = schema.get("items") or {}
            for i, item in enumerate(value):
                self._walk(item_schema, item, None, f"{path}[{i}]", errors, False)
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            for req in schema.get("required") or []:
                if req not in value:
                    sub = f"{path}.{req}" if path else req
                    errors.append(f"{sub}: Required value")
            addl = schema.get("additionalProperties")
            for key, sub_value in value.items():
                sub = f"{path}.{key}" if path else key
                old_sub = old.get(key) if isinstance(old, dict) else None
                sub_has_old = isinstance(old, dict) and key in old
                if key in props:
                    self._walk(props[key], sub_value, old_sub, sub, errors, sub_has_old)
                elif isinstance(addl, dict):
                    self._walk(addl, sub_value, old_sub, sub, errors, sub_has_old)
        self._cel(schema, value, old, path, errors, has_old)

    def _cel(
        self,
        schema: dict[str, Any],
        value: Any,
        old: Any,
        path: str,
        errors: list[str],
        has_old: bool,
    ) -> None:
        rules = schema.get("x-kubernetes-validations") or []
        if not rules:
            return
        import celpy

        for rule in rules:
            text = rule["rule"]
            uses_old = "oldSelf" in text
            if uses_old and not has_old:
                continue  # transition rules only run on updates where the old value exists
            act = {"self": celpy.json_to_cel(value)}
            if uses_old:
                act["oldSelf"] = celpy.json_to_cel(old)
            try:
                ok = _cel_program(text).evaluate(act)
            except Exception as exc:  # a rule that cannot evaluate is a rejection, like the server
                ok = False
                message = f"{rule.get('message') or 'failed rule: ' + text} ({exc})"
            else:
                message = rule.get("message") or f"failed rule: {text}"
            if not bool(ok):
                field = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
                where = field.lstrip(".") or "<nil>"
                errors.append(f"{where}: Invalid value: {json.dumps(_type_name(value))}: {message}")

    def unknown_fields(self, schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
        return []  # the minimal validator prunes silently (no Strict field validation)

    def apply_defaults(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        return obj  # the minimal validator does not default

    def prune(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        meta = out.pop("metadata", None)
        api_version, kind = out.pop("apiVersion", None), out.pop("kind", None)
        root = {
            **schema,
            "properties": {
                k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"
            },
        }
        pruned = _prune(root, out)
        assert isinstance(pruned, dict)
        for key, val in (("apiVersion", api_version), ("kind", kind), ("metadata", meta)):
            if val is not None:
                pruned[key] = val
        return pruned


def _prune(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
            return value
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        out = {}
        for key, sub in value.items():
            if props is not None and key in props:
                out[key] = _prune(props[key], sub)
            elif isinstance(addl, dict):
                out[key] = _prune(addl, sub)
            elif addl is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                out[key] = sub
        return out
    if isinstance(value, list):
        return [_prune(schema.get("items") or {}, v) for v in value]
    return value


def error_field(error: str) -> str:
    """The field path a full error text starts with."""
    return error.split(": ", 1)[0]
