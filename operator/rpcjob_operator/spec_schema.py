"""The RpcJob CRD as the one source of the spec's rules: schema, defaults and CEL, offline.

``parse_job`` checks a spec exactly as the API server admits it (crdschema + crdcel on the
CRD shipped in this package) and then only parses; the few checks the CRD cannot express live
in spec.py / spec_checks.py and nowhere else. Errors become :class:`FieldError`s in the API
server's wording, without its ``Invalid value: "object":`` noise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from rpcjob import contract
from rpcjob_operator import crdschema
from rpcjob_operator.errors import FieldError

# The package's copy of crds/rpcjob.dev_rpcjobs.yaml (a link in the source tree).
CRD_PATH = Path(__file__).resolve().parent / "crd" / "rpcjob.dev_rpcjobs.yaml"
_INVALID = re.compile(r'^Invalid value: ("[^"]*"|[^:]*): ')
_TYPE_WORDS = {f'"{t}"' for t in ("object", "array", "string", "integer", "number", "boolean")}


@cache
def crd() -> dict[str, Any]:
    return crdschema.load_crd(CRD_PATH)


@dataclass(frozen=True)
class Checked:
    errors: tuple[FieldError, ...]
    sound: bool  # no structural error: every declared type, bound and required field holds
    spec: dict[str, Any]  # the spec with unknown fields pruned and the CRD's defaults applied


def field_error(line: str) -> FieldError:
    """``path: Invalid value: X: path in body should ...`` -> FieldError(path, should ...)."""
    path, sep, rest = line.partition(": ")
    if not sep or " " in path:
        return FieldError("spec", line)
    m = _INVALID.match(rest)
    if m is None:
        return FieldError(path, rest)
    message = rest[m.end() :].removeprefix(f"{path} in body ")
    value = m.group(1)  # the offending value, or only its type (then the message says it)
    return FieldError(
        path, message if value in _TYPE_WORDS | {'"null"'} else f"{message}, got {value}"
    )


def check_spec(spec: Any) -> Checked:
    """The CRD's verdict on ``spec``. Cached by content: evaluating the CEL rules costs tens
    of milliseconds and the operator and ``rpcjob run`` parse the same spec every cycle."""
    return _check(json.dumps(spec, sort_keys=True, default=str))


@lru_cache(maxsize=64)
def _check(spec_json: str) -> Checked:
    obj: dict[str, Any] = {"apiVersion": contract.API_VERSION, "kind": contract.KIND}
    if spec_json != "null":
        obj["spec"] = json.loads(spec_json)
    structure, rules = crdschema.check(crd(), obj, strict=False)
    defaulted = crdschema.apply_defaults(crd(), crdschema.prune(crd(), obj))
    errors = tuple(field_error(e) for e in [*structure, *rules])
    return Checked(errors, not structure, defaulted.get("spec") or {})
