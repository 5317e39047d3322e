"""Validation of custom resources against a CRD version's openAPIV3Schema (+ CEL), and pruning.

Pluggable: the store calls whatever ``Validator`` it was given. The default is the project's
offline validator ``rpcjob_operator.crdschema`` (structural schema, CEL rules via
``rpcjob_operator.crdcel`` incl. transition rules, defaults, pruning — the same code
``rpcjob validate`` uses), adapted here from its CRD-level API to the store's per-version schema.
Errors are full field-error texts such as ``spec.x: Invalid value: 3: ...``.
"""

from __future__ import annotations

from typing import Any, Protocol

from rpcjob_operator import crdschema


class Validator(Protocol):
    """What the store needs; ``schema`` is a CRD version's ``openAPIV3Schema``."""

    def validate(
        self, schema: dict[str, Any], obj: dict[str, Any], old_obj: dict[str, Any] | None
    ) -> list[str]: ...

    def prune(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]: ...

    def unknown_fields(self, schema: dict[str, Any], obj: dict[str, Any]) -> list[str]: ...

    def apply_defaults(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]: ...


def _synthetic_crd(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD whose only (storage) version has ``schema``: crdschema's unit is a whole CRD."""
    return {
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "served.local"},
        "spec": {
            "versions": [{"name": "served", "storage": True, "schema": {"openAPIV3Schema": schema}}]
        },
    }


_HEAD = ("apiVersion", "kind")


def _unversioned(obj: dict[str, Any]) -> dict[str, Any]:
    """Without apiVersion (so crdschema picks the storage version, the one served here) and kind
    (never declared in schemas, never pruned by the real server)."""
    return {k: v for k, v in obj.items() if k not in _HEAD}


def _with_head(obj: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    return {**{k: obj[k] for k in _HEAD if k in obj}, **out}


class CrdSchemaValidator:
    """``rpcjob_operator.crdschema`` behind the store's ``Validator`` protocol."""

    name = crdschema.__name__

    def validate(
        self, schema: dict[str, Any], obj: dict[str, Any], old_obj: dict[str, Any] | None
    ) -> list[str]:
        old = _unversioned(old_obj) if old_obj is not None else None
        # strict=False: unknown fields are pruned; fieldValidation=Strict asks unknown_fields.
        return crdschema.validate(_synthetic_crd(schema), _unversioned(obj), old, strict=False)

    def prune(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        return _with_head(obj, crdschema.prune(_synthetic_crd(schema), _unversioned(obj)))

    def unknown_fields(self, schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
        return crdschema.unknown_fields(_synthetic_crd(schema), _unversioned(obj))

    def apply_defaults(self, schema: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
        out = crdschema.apply_defaults(_synthetic_crd(schema), _unversioned(obj))
        return _with_head(obj, out)


def default_validator() -> Validator:
    return CrdSchemaValidator()


def error_field(error: str) -> str:
    """The field path a full error text starts with."""
    return error.split(": ", 1)[0]
