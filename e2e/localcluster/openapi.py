"""Just enough OpenAPI for kubectl: a v3 index, per group-version documents whose PATCH
operations advertise ``fieldValidation`` (so ``kubectl apply`` validates server-side instead of
downloading schemas), CRD schemas as components, and a small v2 document."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import Registry, ResourceType


def _gvk(rt: ResourceType) -> dict[str, str]:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def _schema_name(rt: ResourceType) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{rt.version}.{rt.kind}"


def _param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def _item_path(rt: ResourceType) -> str:
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else "/api/v1"
    ns = "/namespaces/{namespace}" if rt.namespaced else ""
    return f"{prefix}{ns}/{rt.plural}/{{name}}"


def group_version_doc(registry: Registry, gv_path: str) -> dict[str, Any] | None:
    """``api/v1`` or ``apis/<group>/<version>``."""
    parts = gv_path.strip("/").split("/")
    if parts[0] == "api" and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[0] == "apis" and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        return None
    rts = registry.in_group_version(group, version)
    if not rts:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in rts:
        op = {
            "x-kubernetes-group-version-kind": _gvk(rt),
            "parameters": [_param("fieldValidation"), _param("dryRun"), _param("fieldManager")],
            "responses": {"200": {"description": "OK"}},
        }
        paths[_item_path(rt)] = {"get": dict(op), "put": dict(op), "patch": op}
        schema: dict[str, Any] = {"type": "object"}
        if rt.crd_version is not None:
            body = (rt.crd_version.get("schema") or {}).get("openAPIV3Schema") or {}
            schema = json.loads(json.dumps(body))
            props = schema.setdefault("properties", {})
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props["metadata"] = {"type": "object"}
        else:
            schema["x-kubernetes-preserve-unknown-fields"] = True
        schema["x-kubernetes-group-version-kind"] = [_gvk(rt)]
        schemas[_schema_name(rt)] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def v3_index(registry: Registry) -> dict[str, Any]:
    paths = {}
    gvs = {("api/v1" if not rt.group else f"apis/{rt.group}/{rt.version}") for rt in registry.all()}
    for gv in sorted(gvs):
        doc = group_version_doc(registry, gv)
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16].upper()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": paths}


def v2_doc(registry: Registry) -> dict[str, Any]:
    definitions = {}
    for rt in registry.all():
        definitions[_schema_name(rt)] = {
            "type": "object",
            "x-kubernetes-group-version-kind": [_gvk(rt)],
        }
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": {},
        "definitions": definitions,
    }


# Asked for with "@" (what client-go sends, kube-openapi's deprecated form); answered with ".",
# which Go's mime parser accepts.
V2_PROTOBUF_ACCEPT = ("com.github.proto-openapi.spec.v2@v1.0+protobuf",
                      "com.github.proto-openapi.spec.v2.v1.0+protobuf")  # fmt: skip
V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _pb_string(field: int, value: str) -> bytes:
    data = value.encode()
    assert len(data) < 128  # one-byte lengths are all this needs
    return bytes([field << 3 | 2, len(data)]) + data


def v2_protobuf() -> bytes:
    """The v2 document as kubectl asks for it (gnostic ``openapi_v2.Document``): swagger and
    info only, no definitions. kubectl validates a ``kind: List`` client-side against v2
    (``/openapi/v3`` answers for resources only) and skips items whose kind has no schema, so
    the items are validated by the server (fieldValidation) as single objects are."""
    info = _pb_string(1, "Kubernetes") + _pb_string(2, "v1.32.0")
    return _pb_string(1, "2.0") + bytes([2 << 3 | 2, len(info)]) + info
