"""The job shape and visible-GPU inputs of device planning: RPCJOB_SLOTS / RPCJOB_ROLE_GPUS,
CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES, and the worker-side visibility check."""

from __future__ import annotations

from typing import Any

import pytest

from rpcjob import contract
from rpcjob.devices import DeviceMapError, RoleShape, parse_slots, visible_gpus


@pytest.mark.parametrize(
    ("env", "torch_count", "expected"),
    [
        ({}, None, None),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, None, ("0", "1")),
        ({"CUDA_VISIBLE_DEVICES": ""}, None, ()),
        ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, None, ("0",)),  # CUDA stops at an invalid entry
        ({"CUDA_VISIBLE_DEVICES": "MIG-8f2a"}, None, ("MIG-8f2a",)),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, None, None),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, None, ()),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, None, ("GPU-a", "GPU-b")),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, 2, ("GPU-a", "GPU-b")),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, 4, 4),  # torch's count is the truth
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 1, 1),
        ({"CUDA_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "all"}, None, ("1",)),
    ],
)
def test_visible_gpus(env: dict[str, str], torch_count: int | None, expected: Any) -> None:
    assert visible_gpus(env, torch_count) == expected


def test_parse_slots() -> None:
    got = parse_slots('{"worker": 8, "driver": 1}', '{"worker": 2, "driver": 0, "gone": 1}')
    assert got == {"worker": RoleShape(8, 2), "driver": RoleShape(1, 0)}
    assert parse_slots('{"worker": 2}') == {"worker": RoleShape(2, None)}


@pytest.mark.parametrize(
    ("slots_json", "gpus_json", "message"),
    [
        (
            "{worker: 8}",
            "",
            "RPCJOB_SLOTS='{worker: 8}' is not JSON (Expecting property name "
            'enclosed in double quotes); expected e.g. {"worker": 8, "driver": 1}',
        ),
        (
            '{"worker": -1}',
            "",
            "RPCJOB_SLOTS='{\"worker\": -1}' must map each role to its "
            'maxReplicas (a non-negative integer), e.g. {"worker": 8, "driver": 1}',
        ),
        (
            '{"worker": 2}',
            "[1]",
            "RPCJOB_ROLE_GPUS='[1]' must map each role to its "
            'nvidia.com/gpu request per replica, e.g. {"worker": 1, "driver": 0}',
        ),
        (
            '{"worker": 2}',
            "{",
            "RPCJOB_ROLE_GPUS='{' is not JSON (Expecting property name "
            'enclosed in double quotes); expected e.g. {"worker": 1, "driver": 0}',
        ),
    ],
)
def test_parse_slots_errors(slots_json: str, gpus_json: str, message: str) -> None:
    with pytest.raises(DeviceMapError) as err:
        parse_slots(slots_json, gpus_json)
    assert str(err.value) == message


def test_parse_slots_rejects_bad_role_names() -> None:
    with pytest.raises(contract.InvalidName):
        parse_slots('{"my-role": 1}')
