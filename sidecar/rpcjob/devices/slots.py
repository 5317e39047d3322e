"""The job's shape as the pod's environment gives it: RPCJOB_SLOTS and RPCJOB_ROLE_GPUS."""

from __future__ import annotations

import json

from rpcjob import contract
from rpcjob.devices.maps import DeviceMapError, RoleShape


def parse_slots(slots_json: str, role_gpus_json: str = "") -> dict[str, RoleShape]:
    """Job shape from RPCJOB_SLOTS ({"role": maxReplicas}) and RPCJOB_ROLE_GPUS ({"role": n})."""
    try:
        raw = json.loads(slots_json)
    except json.JSONDecodeError as e:
        raise DeviceMapError(
            f"{contract.ENV_SLOTS}={slots_json!r} is not JSON ({e.msg}); expected e.g. "
            '{"worker": 8, "driver": 1}'
        ) from None
    if not isinstance(raw, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in raw.values()
    ):
        raise DeviceMapError(
            f"{contract.ENV_SLOTS}={slots_json!r} must map each role to its maxReplicas (a "
            'non-negative integer), e.g. {"worker": 8, "driver": 1}'
        )
    gpus: dict[str, int | None] = dict.fromkeys(raw)
    if role_gpus_json:
        try:
            graw = json.loads(role_gpus_json)
        except json.JSONDecodeError as e:
            raise DeviceMapError(
                f"{contract.ENV_ROLE_GPUS}={role_gpus_json!r} is not JSON ({e.msg}); expected "
                'e.g. {"worker": 1, "driver": 0}'
            ) from None
        if not isinstance(graw, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in graw.values()
        ):
            raise DeviceMapError(
                f"{contract.ENV_ROLE_GPUS}={role_gpus_json!r} must map each role to its "
                'nvidia.com/gpu request per replica, e.g. {"worker": 1, "driver": 0}'
            )
        for role, n in graw.items():
            if role in gpus:
                gpus[role] = n
    for role in raw:
        contract.validate_role(role)
    return {role: RoleShape(max_replicas=n, gpus=gpus[role]) for role, n in raw.items()}
