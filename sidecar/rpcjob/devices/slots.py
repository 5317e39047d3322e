"""The job's shape as the pod's environment gives it: RPCJOB_SLOTS and RPCJOB_ROLE_GPUS."""

from __future__ import annotations

import json

from rpcjob import contract
from rpcjob.devices.maps import DeviceMapError, RoleShape


def _role_ints(raw_json: str, env: str, what: str, example: str) -> dict[str, int]:
    """A JSON object of role -> non-negative integer, or a DeviceMapError naming ``env``."""
    try:
        raw = json.loads(raw_json)
    except json.JSONDecodeError as e:
        raise DeviceMapError(
            f"{env}={raw_json!r} is not JSON ({e.msg}); expected e.g. {example}"
        ) from None
    if not isinstance(raw, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw.values()
    ):
        raise DeviceMapError(f"{env}={raw_json!r} must map each role to {what}, e.g. {example}")
    return raw


def parse_slots(slots_json: str, role_gpus_json: str = "") -> dict[str, RoleShape]:
    """Job shape from RPCJOB_SLOTS ({"role": maxReplicas}) and RPCJOB_ROLE_GPUS ({"role": n})."""
    raw = _role_ints(
        slots_json,
        contract.ENV_SLOTS,
        "its maxReplicas (a non-negative integer)",
        '{"worker": 8, "driver": 1}',
    )
    gpus: dict[str, int | None] = dict.fromkeys(raw)
    if role_gpus_json:
        graw = _role_ints(
            role_gpus_json,
            contract.ENV_ROLE_GPUS,
            "its nvidia.com/gpu request per replica",
            '{"worker": 1, "driver": 0}',
        )
        for role, n in graw.items():
            if role in gpus:
                gpus[role] = n
    for role in raw:
        contract.validate_role(role)
    return {role: RoleShape(max_replicas=n, gpus=gpus[role]) for role, n in raw.items()}
