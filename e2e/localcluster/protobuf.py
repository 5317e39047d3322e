"""Kubernetes protobuf request bodies -> JSON objects, for the built-in kinds clients send that way.

client-go's typed clients (helm's release storage, ``kubectl create namespace|secret|configmap|
serviceaccount``, ``kubectl auth can-i``, typed deletes) encode bodies as
``application/vnd.kubernetes.protobuf``: the magic ``k8s\\x00`` and a ``runtime.Unknown``
{typeMeta{apiVersion, kind}, raw, contentEncoding, contentType} whose ``raw`` is the object in
the generated.proto messages of k8s.io/api. This module decodes the wire format by hand for the
messages below (field numbers from k8s.io/api/{core,authorization}/v1 and
k8s.io/apimachinery/pkg/apis/meta/v1 generated.proto); anything else is
a ``ProtobufUnsupported`` error naming the kind, which the server answers with 415 and the fix
(send JSON). Responses stay JSON: clients accept it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"


class ProtobufUnsupported(ValueError):
    """A protobuf body the local API server cannot decode; the message says what to do."""


# --- wire format ---------------------------------------------------------------------------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ProtobufUnsupported("truncated protobuf varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: varints as int, length-delimited as bytes (in order)."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            out.append((num, value))
        elif wire == 2:
            n, i = _varint(buf, i)
            out.append((num, buf[i : i + n]))
            i += n
        elif wire == 1:
            out.append((num, int.from_bytes(buf[i : i + 8], "little")))
            i += 8
        elif wire == 5:
            out.append((num, int.from_bytes(buf[i : i + 4], "little")))
            i += 4
        else:
            raise ProtobufUnsupported(f"protobuf wire type {wire} is not supported")
    return out


# --- field decoders ------------------------------------------------------------------------
Decoder = Callable[[int | bytes], Any]


def _str(v: int | bytes) -> str:
    assert isinstance(v, bytes)
    return v.decode()


def _b64(v: int | bytes) -> str:  # JSON carries []byte as base64
    assert isinstance(v, bytes)
    return base64.b64encode(v).decode()


def _int(v: int | bytes) -> int:
    assert isinstance(v, int)
    return v - (1 << 64) if v >= 1 << 63 else v


def _bool(v: int | bytes) -> bool:
    return bool(v)


def _time(v: int | bytes) -> str | None:
    assert isinstance(v, bytes)
    secs = next((_int(x) for n, x in fields(v) if n == 1), 0)
    if secs <= 0:  # Go's zero time: JSON has null (omitted)
        return None
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A message schema: field number -> (JSON name, decoder, how): how is "one", "list" or "map".
Schema = dict[int, tuple[str, Decoder, str]]


def message(schema: Schema) -> Decoder:
    def decode(v: int | bytes) -> dict[str, Any]:
        assert isinstance(v, bytes)
        out: dict[str, Any] = {}
        for num, raw in fields(v):
            if num not in schema:
                continue  # a field we do not model (managedFields, ...): dropped
            name, dec, how = schema[num]
            if how == "map":
                entry = dict(fields(raw))  # type: ignore[arg-type]
                out.setdefault(name, {})[_str(entry.get(1, b""))] = dec(entry.get(2, b""))
            elif how == "list":
                out.setdefault(name, []).append(dec(raw))
            else:
                value = dec(raw)
                # gogo-protobuf writes every scalar, zero or not; JSON omits them (omitempty).
                if value is not None and value != "" and value is not False and value != 0:
                    out[name] = value
        return out

    return decode


OWNER_REFERENCE = message({
    1: ("kind", _str, "one"), 3: ("name", _str, "one"), 4: ("uid", _str, "one"),
    5: ("apiVersion", _str, "one"), 6: ("controller", _bool, "one"),
    7: ("blockOwnerDeletion", _bool, "one"),
})  # fmt: skip
OBJECT_META = message({
    1: ("name", _str, "one"), 2: ("generateName", _str, "one"), 3: ("namespace", _str, "one"),
    5: ("uid", _str, "one"), 6: ("resourceVersion", _str, "one"),
    7: ("generation", _int, "one"), 8: ("creationTimestamp", _time, "one"),
    9: ("deletionTimestamp", _time, "one"), 10: ("deletionGracePeriodSeconds", _int, "one"),
    11: ("labels", _str, "map"), 12: ("annotations", _str, "map"),
    13: ("ownerReferences", OWNER_REFERENCE, "list"), 14: ("finalizers", _str, "list"),
})  # fmt: skip
LOCAL_OBJECT_REFERENCE = message({1: ("name", _str, "one")})
OBJECT_REFERENCE = message({
    1: ("kind", _str, "one"), 2: ("namespace", _str, "one"), 3: ("name", _str, "one"),
    4: ("uid", _str, "one"), 5: ("apiVersion", _str, "one"),
})  # fmt: skip

# k8s.io/api/authorization/v1: kubectl auth can-i sends SelfSubjectAccessReviews.
RESOURCE_ATTRIBUTES = message({
    1: ("namespace", _str, "one"), 2: ("verb", _str, "one"), 3: ("group", _str, "one"),
    4: ("version", _str, "one"), 5: ("resource", _str, "one"), 6: ("subresource", _str, "one"),
    7: ("name", _str, "one"),
})  # fmt: skip
NON_RESOURCE_ATTRIBUTES = message({1: ("path", _str, "one"), 2: ("verb", _str, "one")})
ACCESS_REVIEW_SPEC: Schema = {
    1: ("resourceAttributes", RESOURCE_ATTRIBUTES, "one"),
    2: ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES, "one"),
}

KINDS: dict[str, Schema] = {
    "Secret": {
        1: ("metadata", OBJECT_META, "one"), 2: ("data", _b64, "map"), 3: ("type", _str, "one"),
        4: ("stringData", _str, "map"), 5: ("immutable", _bool, "one"),
    },
    "ConfigMap": {
        1: ("metadata", OBJECT_META, "one"), 2: ("data", _str, "map"),
        3: ("binaryData", _b64, "map"), 4: ("immutable", _bool, "one"),
    },
    "Namespace": {
        1: ("metadata", OBJECT_META, "one"),
        2: ("spec", message({1: ("finalizers", _str, "list")}), "one"),
    },
    "ServiceAccount": {
        1: ("metadata", OBJECT_META, "one"), 2: ("secrets", OBJECT_REFERENCE, "list"),
        3: ("imagePullSecrets", LOCAL_OBJECT_REFERENCE, "list"),
        4: ("automountServiceAccountToken", _bool, "one"),
    },
    "SelfSubjectAccessReview": {
        1: ("metadata", OBJECT_META, "one"), 2: ("spec", message(ACCESS_REVIEW_SPEC), "one"),
    },
    "SubjectAccessReview": {
        1: ("metadata", OBJECT_META, "one"),
        2: ("spec", message({**ACCESS_REVIEW_SPEC, 3: ("user", _str, "one"),
                             4: ("groups", _str, "list"), 6: ("uid", _str, "one")}), "one"),
    },
    "DeleteOptions": {
        1: ("gracePeriodSeconds", _int, "one"),
        2: ("preconditions", message({1: ("uid", _str, "one"),
                                      2: ("resourceVersion", _str, "one")}), "one"),
        3: ("orphanDependents", _bool, "one"), 4: ("propagationPolicy", _str, "one"),
        5: ("dryRun", _str, "list"),
    },
}  # fmt: skip


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded object as the JSON object the client would have sent."""
    if not body.startswith(MAGIC):
        raise ProtobufUnsupported("a protobuf body must start with the k8s\\x00 magic")
    unknown = dict(fields(body[len(MAGIC) :]))
    type_meta = dict(fields(unknown.get(1, b"")))  # type: ignore[arg-type]
    api_version, kind = _str(type_meta.get(1, b"")), _str(type_meta.get(2, b""))
    if kind not in KINDS:
        raise ProtobufUnsupported(
            f"the local API server decodes protobuf only for {', '.join(sorted(KINDS))}; "
            f"got {api_version}/{kind or '?'}: send it as JSON (kubectl apply -f, or a client "
            "configured with content type application/json)"
        )
    obj = message(KINDS[kind])(unknown.get(2, b""))
    return {"apiVersion": api_version, "kind": kind, **obj}
