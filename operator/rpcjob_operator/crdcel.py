"""CEL ``x-kubernetes-validations`` evaluated offline with cel-python (celpy 0.5).

Semantics copied from the API server: each rule runs with ``self`` bound to the value at the
schema node that declares it; a rule that mentions ``oldSelf`` is a transition rule and runs
only on update when the old value correlates (object properties by name, map entries by key;
list items never correlate here, as for atomic lists upstream). Values are converted along the
schema so that ``type: number`` fields are CEL doubles even when written as integers (celpy,
like strict CEL, has no int/double comparison). A rule that errors (e.g. a missing key) is
reported as a failure, as the API server does.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel

Schema = dict[str, Any]
_OLD_SELF = re.compile(r"\boldSelf\b")


@lru_cache(maxsize=1)
def _env() -> Any:
    # Building CEL's parser takes most of a second: made on the first rule, so that the CLI
    # commands that never check a spec (status, top, debug) do not pay it at import.
    return celpy.Environment()


@lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    return _env().program(_env().compile(rule))


def child(schema: Schema, key: str) -> Schema | None:
    """The schema of an object's ``key``: its property's, else additionalProperties'."""
    props: dict[str, Schema] = schema.get("properties", {})
    addl = schema.get("additionalProperties")
    return props.get(key, addl if isinstance(addl, dict) else None)


def to_cel(schema: Schema | None, value: Any) -> Any:
    """Convert JSON to CEL values, following ``schema`` for number typing."""
    if schema is None or (
        schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties")
    ):
        return json_to_cel(value)
    if isinstance(value, dict):
        cel = {celtypes.StringType(k): to_cel(child(schema, k), v) for k, v in value.items()}
        return celtypes.MapType(cel)
    if isinstance(value, list):
        items = schema.get("items")
        return celtypes.ListType(
            [to_cel(items if isinstance(items, dict) else None, v) for v in value]
        )
    if schema.get("type") == "number" and isinstance(value, int):
        return celtypes.DoubleType(float(value))
    return json_to_cel(value)


def _type_word(schema: Schema, value: Any) -> str:
    if "type" in schema:
        return str(schema["type"])
    return "object" if isinstance(value, dict) else type(value).__name__


def _run(rule: dict[str, Any], schema: Schema, value: Any, old: Any, path: str) -> str | None:
    activation = {"self": to_cel(schema, value)}
    if old is not None:
        activation["oldSelf"] = to_cel(schema, old)
    target = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
    shown = target.lstrip(".") or "<root>"
    word = f'"{_type_word(schema, value)}"'
    try:
        result = _program(rule["rule"]).evaluate(activation)
    except Exception as e:  # CELEvalError and friends
        return f"{shown}: Invalid value: {word}: {e} evaluating rule: {rule['rule']}"
    if isinstance(result, Exception):
        return f"{shown}: Invalid value: {word}: {result} evaluating rule: {rule['rule']}"
    if result is True or (isinstance(result, celtypes.BoolType) and bool(result)):
        return None
    return f"{shown}: Invalid value: {word}: {_message(rule, activation)}"


def _message(rule: dict[str, Any], activation: dict[str, Any]) -> str:
    """``messageExpression`` wins when it yields a non-empty string; else ``message`` (as the
    API server does, which also falls back when the expression errors)."""
    expr = rule.get("messageExpression")
    if expr:
        try:
            out = _program(expr).evaluate(activation)
        except Exception:  # CELEvalError and friends: fall back to the static message
            out = None
        if isinstance(out, str) and out.strip():
            return str(out)
    return str(rule.get("message") or f"failed rule: {rule['rule']}")


def evaluate_rules(schema: Schema, value: Any, old: Any = None, path: str = "") -> list[str]:
    """Every failing rule under ``schema`` for ``value`` (and the correlated ``old``)."""
    errs: list[str] = []
    if value is None:
        return errs
    for rule in schema.get("x-kubernetes-validations", []):
        if _OLD_SELF.search(rule["rule"]) and old is None:
            continue
        err = _run(rule, schema, value, old, path)
        if err:
            errs.append(err)
    if isinstance(value, dict):
        for key, item in value.items():
            sub = child(schema, key)
            if sub is None:
                continue
            prior = old.get(key) if isinstance(old, dict) else None
            errs += evaluate_rules(sub, item, prior, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errs += evaluate_rules(schema["items"], item, None, f"{path}[{i}]")
    return errs
