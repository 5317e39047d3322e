"""GPU devices and TensorPipe device maps from node labels (torch-free). See docs/devices.md."""

from rpcjob.devices.labels import NodeGPUs, parse_node_labels
from rpcjob.devices.maps import (
    DEVICE_MAPS_AUTO,
    DEVICE_MAPS_OFF,
    DeviceMapError,
    DevicePlan,
    Peer,
    RoleShape,
    forward_map,
    plan_devices,
    reverse_map,
    slot_names,
    visible_gpus,
)
from rpcjob.devices.slots import parse_slots

__all__ = [
    "DEVICE_MAPS_AUTO",
    "DEVICE_MAPS_OFF",
    "DeviceMapError",
    "DevicePlan",
    "NodeGPUs",
    "Peer",
    "RoleShape",
    "forward_map",
    "parse_node_labels",
    "parse_slots",
    "plan_devices",
    "reverse_map",
    "slot_names",
    "visible_gpus",
]
