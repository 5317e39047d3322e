"""Offline validation of a custom resource against its CRD, shaped like the API server's.

What the API server does on create/update, in order: prune (or, with field validation
``Strict`` as kubectl uses, reject) fields the structural schema does not declare; apply schema
defaults; validate types, required fields, enums, bounds, patterns; evaluate the CEL rules
(``x-kubernetes-validations``), transition rules (``oldSelf``) only on update where the old value
correlates. Error strings follow the API server's ``field.Error`` shape, e.g.
``spec.roles.worker.replicas: Invalid value: -1: spec.roles.worker.replicas in body should be
greater than or equal to 0`` and ``spec.roles.worker: Invalid value: "object": <rule message>``.

Used by ``rpcjob validate`` and by ``rpcjob run``. Depends only on PyYAML and
cel-python (see crdcel.py).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

import yaml

from rpcjob_operator import crdcel

Schema = dict[str, Any]

_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class CRDError(ValueError):
    """The CRD file itself is unusable (missing, not a CRD, no such version)."""


def load_crd(path: str | Path) -> dict[str, Any]:
    """Read a CRD YAML file (a single document)."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as e:
        raise CRDError(f"cannot read CRD {p}: {e.strerror}") from e
    if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
        raise CRDError(f"{p} is not a CustomResourceDefinition (kind: {doc.get('kind')!r})")
    return doc


def schema_for(crd: dict[str, Any], version: str | None = None) -> Schema:
    """The openAPIV3Schema of ``version`` (default: the storage version)."""
    for v in crd["spec"]["versions"]:
        if (version is None and v.get("storage")) or v["name"] == version:
            return dict(v["schema"]["openAPIV3Schema"])
    raise CRDError(f"CRD {crd['metadata']['name']} has no version {version!r}")


def _version_of(obj: dict[str, Any]) -> str | None:
    api = obj.get("apiVersion")
    return api.rsplit("/", 1)[-1] if isinstance(api, str) and "/" in api else None


def _fmt(value: Any) -> str:
    """Render a value like the API server does in ``Invalid value: ...``."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


# JSON type names by Python type, bool before int (a bool is an int in Python).
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "object")


def _type_ok(want: str, value: Any) -> bool:
    got = _type_name(value)
    if want == "number":
        return got in ("integer", "number")
    if want == "integer" and got == "number":
        return float(value).is_integer()
    return got == want


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _preserves(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


# --- pruning and defaulting -------------------------------------------------------------------
def _walk_unknown(schema: Schema, value: Any, path: str, out: list[str], drop: bool) -> None:
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        addl = schema.get("additionalProperties")
        for key in list(value):
            if path == "" and key == "metadata":
                continue  # ObjectMeta is validated by the API machinery, not the schema
            sub = crdcel.child(schema, key)
            if sub is None:
                if _preserves(schema) or addl is True:
                    continue
                out.append(_child(path, key))
                if drop:
                    del value[key]
                continue
            _walk_unknown(sub, value[key], _child(path, key), out, drop)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk_unknown(schema["items"], item, f"{path}[{i}]", out, drop)


def unknown_fields(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Paths of fields the schema does not declare (what kubectl's Strict validation rejects)."""
    out: list[str] = []
    _walk_unknown(schema_for(crd, _version_of(obj)), obj, "", out, drop=False)
    return out


def prune(crd: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` without undeclared fields, as the API server stores it."""
    pruned = copy.deepcopy(obj)
    _walk_unknown(schema_for(crd, _version_of(obj)), pruned, "", [], drop=True)
    return pruned


def _default(schema: Schema, value: Any) -> None:
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(sub, value[key])
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key in value:
                if key not in schema.get("properties", {}):
                    _default(addl, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(schema["items"], item)


def apply_defaults(crd: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with the schema's defaults filled in (the API server does this)."""
    out = copy.deepcopy(obj)
    _default(schema_for(crd, _version_of(obj)), out)
    return out


# --- structural validation --------------------------------------------------------------------
def _check_scalar(schema: Schema, value: Any, path: str, errs: list[str]) -> None:
    shown = path or "<root>"

    def invalid(rule: str) -> None:
        errs.append(f"{shown}: Invalid value: {_fmt(value)}: {shown} in body {rule}")

    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        errs.append(f"{shown}: Unsupported value: {_fmt(value)}: supported values: {supported}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            invalid(f"should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            invalid(f"should be less than or equal to {schema['maximum']}")
        lo_hi = _INT_BOUNDS.get(schema.get("format", ""))
        if lo_hi and not lo_hi[0] <= value <= lo_hi[1]:
            invalid(f"must be of type {schema['format']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            invalid(f"should be at least {schema['minLength']} chars long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errs.append(f"{shown}: Too long: may not be more than {schema['maxLength']} bytes")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            invalid(f"should match '{schema['pattern']}'")
        if schema.get("format") == "date-time" and not _is_datetime(value):
            invalid("must be of type date-time")


def _is_datetime(value: str) -> bool:
    try:
        _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value


def _size_limits(schema: Schema, n: int, kind: str, shown: str, errs: list[str]) -> None:
    """min/max{Properties,Items}, in the API server's words ("Too many" always says items)."""
    low, high = schema.get(f"min{kind}"), schema.get(f"max{kind}")
    if low is not None and n < low:
        errs.append(
            f"{shown}: Invalid value: {n}: {shown} in body should have at least {low} "
            f"{kind.lower()}"
        )
    if high is not None and n > high:
        errs.append(f"{shown}: Too many: {n}: must have at most {high} items")


def _structural(schema: Schema, value: Any, path: str, errs: list[str]) -> None:
    shown = path or "<root>"
    if value is None:
        if not schema.get("nullable"):
            errs.append(
                f'{shown}: Invalid value: "null": {shown} in body must be of type '
                f'{schema.get("type", "object")}: "null"'
            )
        return
    want = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        want = None if _type_name(value) in ("integer", "string") else "integer or string"
    if want and not _type_ok(want, value):
        errs.append(
            f"{shown}: Invalid value: {_fmt(_type_name(value))}: {shown} in body must be of "
            f"type {want}: {_fmt(_type_name(value))}"
        )
        return
    _check_scalar(schema, value, path, errs)
    if isinstance(value, dict):
        _size_limits(schema, len(value), "Properties", shown, errs)
        for req in schema.get("required", []):
            if req not in value:
                errs.append(f"{_child(path, req)}: Required value")
        for key, item in value.items():
            if path == "" and key == "metadata":
                continue
            sub = crdcel.child(schema, key)
            if sub is not None:
                _structural(sub, item, _child(path, key), errs)
    elif isinstance(value, list):
        _size_limits(schema, len(value), "Items", shown, errs)
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _structural(items, item, f"{path}[{i}]", errs)
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen: set[str] = set()
            for i, item in enumerate(value):
                k = json.dumps([item.get(x) for x in keys] if isinstance(item, dict) else item)
                if k in seen:
                    errs.append(f"{path}[{i}]: Duplicate value: {k}")
                seen.add(k)


def validate(
    crd: dict[str, Any],
    obj: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    strict: bool = True,
) -> list[str]:
    """Errors the API server would return for creating ``obj`` (or updating ``old`` to it).

    ``strict`` reports undeclared fields (kubectl's default server-side field validation);
    without it they are silently pruned, as with ``--validate=false``.
    """
    structure, rules = check(crd, obj, old, strict=strict)
    return structure + rules


def check(
    crd: dict[str, Any],
    obj: dict[str, Any],
    old: dict[str, Any] | None = None,
    *,
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """:func:`validate` in two parts: (structural errors, failing CEL rules). The rules are
    evaluated only on a sound structure (as the API server does), so a caller that finds no
    structural error may rely on every declared type, bound and required field."""
    errs: list[str] = []
    if strict:
        errs += [f'unknown field "{p}"' for p in unknown_fields(crd, obj)]
    schema = schema_for(crd, _version_of(obj))
    new = apply_defaults(crd, prune(crd, obj))
    _structural(schema, new, "", errs)
    if errs:
        return errs, []  # the API server skips CEL when the structure is already wrong
    prior = apply_defaults(crd, prune(crd, old)) if old is not None else None
    return [], crdcel.evaluate_rules(schema, new, prior)
