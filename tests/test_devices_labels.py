"""Node label parsing: every fixture node (good and bad) and every malformed-label message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rpcjob.devices import NodeGPUs, parse_node_labels

# Realistic GPU node label sets, good and bad (GPU Feature Discovery's labels and ours).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "node-labels.yaml"
NODES: dict[str, dict[str, str]] = yaml.safe_load(FIXTURES.read_text())["nodes"]

CLIQUE = "7b968a6d-c8aa-45e1-9e07-e1e51be99c31.1"

# node -> expected fields (anything not named keeps its default) and the exact warnings.
EXPECTED: dict[str, tuple[dict[str, Any], list[str]]] = {
    "dgx-h100": (
        dict(
            present=True,
            count=8,
            labelled_count=8,
            product="NVIDIA-H100-80GB-HBM3",
            memory_mib=81559,
            family="hopper",
            machine="DGX-H100",
        ),
        [],
    ),
    "hgx-h200-a": (
        dict(present=True, count=8, product="NVIDIA-H200", memory_mib=143771, family="hopper"),
        [],
    ),
    "gb200-nvl-rack1-node3": (
        dict(present=True, count=4, product="NVIDIA-GB200", family="blackwell", clique=CLIQUE),
        [],
    ),
    "gb200-nvl-rack1-node4": (dict(present=True, count=4, clique=CLIQUE), []),
    "a100-mig-single": (
        dict(
            present=True,
            count=56,
            mig_strategy="single",
            memory_mib=5120,
            product="A100-SXM4-40GB-MIG-1g.5gb",
        ),
        [],
    ),
    "a100-mig-mixed": (
        dict(present=True, count=8, mig_strategy="mixed", mig_profiles={"3g.20gb": 2, "1g.5gb": 4}),
        [],
    ),
    "t4-time-sliced": (
        dict(
            present=True,
            count=1,
            replicas=4,
            sharing_strategy="time-slicing",
            product="Tesla-T4-SHARED",
        ),
        [],
    ),
    "cpu-only": (dict(present=False, count=None), []),
    "override": (dict(count=2, labelled_count=8, override=2), []),
    "bad-count-word": (
        dict(count=None, labelled_count=None),
        [
            "node label nvidia.com/gpu.count='eight' on node bad-count-word is not a "
            "non-negative integer; fix the label or set rpcjob.dev/gpus; rpcjob ignores it and "
            "trusts the GPUs the container sees"
        ],
    ),
    "bad-count-negative": (
        dict(count=None),
        [
            "node label nvidia.com/gpu.count='-1' on node bad-count-negative is not a "
            "non-negative integer; fix the label or set rpcjob.dev/gpus; rpcjob ignores it and "
            "trusts the GPUs the container sees"
        ],
    ),
    "bad-override": (
        dict(count=None, override=None),
        [
            "node label rpcjob.dev/gpus='2.5' on node bad-override is not a non-negative "
            "integer; it must be a whole number of GPUs; fix or remove the label (rpcjob "
            "ignores it and uses nvidia.com/gpu.count)"
        ],
    ),
}


def test_every_fixture_node_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(NODES)


@pytest.mark.parametrize("node", sorted(NODES))
def test_fixture_node(node: str) -> None:
    fields, warnings = EXPECTED[node]
    got = parse_node_labels(NODES[node], node)
    assert got.node == node
    for key, value in fields.items():
        assert getattr(got, key) == value, key
    assert list(got.warnings) == warnings


DESCRIBED = {  # the sidecar logs this line at start (the informational labels' only use)
    "dgx-h100": "8 GPU(s): NVIDIA-H100-80GB-HBM3, 81559 MiB, hopper, DGX-H100",
    "hgx-h200-a": "8 GPU(s): NVIDIA-H200, 143771 MiB, hopper",
    "gb200-nvl-rack1-node3": f"4 GPU(s): NVIDIA-GB200, blackwell; NVLink clique {CLIQUE}",
    "a100-mig-single": "56 MIG device(s): A100-SXM4-40GB-MIG-1g.5gb, 5120 MiB; MIG single",
    "a100-mig-mixed": "8 GPU(s): NVIDIA-A100-SXM4-40GB; MIG mixed (1g.5gb x4, 3g.20gb x2)",
    "t4-time-sliced": "1 GPU(s): Tesla-T4-SHARED; shared (time-slicing, 4 per GPU)",
    "override": "2 GPU(s) (rpcjob.dev/gpus)",
    "cpu-only": "no GPU labels",
    "bad-count-word": "no usable GPU labels (see the warnings)",
}


@pytest.mark.parametrize("node", sorted(DESCRIBED))
def test_describe(node: str) -> None:
    assert parse_node_labels(NODES[node], node).describe() == DESCRIBED[node]


@pytest.mark.parametrize(
    ("node", "is_mig", "is_shared"),
    [
        ("dgx-h100", False, False),
        ("a100-mig-single", True, False),
        ("a100-mig-mixed", False, False),  # nvidia.com/gpu still names whole GPUs
        ("t4-time-sliced", False, True),
        ("cpu-only", False, False),
        ("bad-count-word", False, False),
    ],
)
def test_derived_properties(node: str, is_mig: bool, is_shared: bool) -> None:
    got = parse_node_labels(NODES[node], node)
    assert (got.is_mig, got.is_shared) == (is_mig, is_shared)


@pytest.mark.parametrize(
    ("labels", "fields", "warning"),
    [
        (
            {"nvidia.com/gpu.count": "8", "nvidia.com/mig.strategy": "Partial"},
            dict(mig_strategy="single"),
            "node label nvidia.com/mig.strategy='Partial' on node n is not one of none, single, "
            "mixed; rpcjob assumes MIG devices (strategy 'single') and declares no CUDA device "
            "maps for pods on this node; fix the label",
        ),
        (
            {"nvidia.com/mig.strategy": "SINGLE"},
            dict(mig_strategy="single"),
            None,
        ),
        (
            {"nvidia.com/gpu.replicas": "four"},
            dict(replicas=1, sharing_strategy="none"),
            "node label nvidia.com/gpu.replicas='four' on node n is not a non-negative integer; "
            "it should be how many times each GPU is advertised; rpcjob assumes 1 (not shared)",
        ),
        (
            {"nvidia.com/gpu.replicas": "0"},
            dict(replicas=1),
            "node label nvidia.com/gpu.replicas=0 on node n is not a valid replica count; "
            "rpcjob assumes 1 (not shared)",
        ),
        (
            {"nvidia.com/gpu.replicas": "2"},  # no sharing-strategy label: still shared
            dict(replicas=2, sharing_strategy="time-slicing"),
            None,
        ),
        (
            {"nvidia.com/gpu.sharing-strategy": "magic"},
            dict(sharing_strategy="time-slicing"),
            "node label nvidia.com/gpu.sharing-strategy='magic' on node n is not one of none, "
            "time-slicing, mps; rpcjob treats the GPUs as shared",
        ),
        (
            {"nvidia.com/gpu.count": "2", "rpcjob.dev/gpus": "4"},
            dict(count=4, labelled_count=2, override=4),
            "node label rpcjob.dev/gpus=4 on node n is larger than nvidia.com/gpu.count=2; "
            "rpcjob uses the override, but the node may not have that many GPUs",
        ),
        (
            {"nvidia.com/gpu.memory": "80GB"},
            dict(memory_mib=None),
            "node label nvidia.com/gpu.memory='80GB' on node n is not a non-negative integer; "
            "it should be the GPU memory in MiB; rpcjob ignores it",
        ),
        (
            {"nvidia.com/gpu.present": "yes"},
            dict(present=False),
            "node label nvidia.com/gpu.present='yes' on node n is not 'true' or 'false'; "
            "treating it as absent",
        ),
        (
            {"nvidia.com/mig.strategy": "mixed", "nvidia.com/mig-1g.5gb.count": "x"},
            dict(mig_profiles={}),
            "node label nvidia.com/mig-1g.5gb.count='x' on node n is not a non-negative "
            "integer; rpcjob ignores this MIG profile",
        ),
        (
            {"nvidia.com/mig-2g.10gb.count": "3"},
            dict(mig_profiles={"2g.10gb": 3}, mig_strategy="none"),
            "MIG profile count labels (2g.10gb) on node n are set but "
            "nvidia.com/mig.strategy='none'; GFD sets them only under 'mixed'; check the GPU "
            "operator's MIG configuration",
        ),
        ({"nvidia.com/gpu.count": " 4 "}, dict(count=4), None),
        ({"rpcjob.dev/gpus": "0"}, dict(count=0), None),  # an override can switch GPUs off
    ],
)
def test_malformed_and_edge_labels(
    labels: dict[str, str], fields: dict[str, Any], warning: str | None
) -> None:
    got = parse_node_labels(labels, "n")
    for key, value in fields.items():
        assert getattr(got, key) == value, key
    assert list(got.warnings) == ([warning] if warning else [])


@pytest.mark.parametrize(
    "value", ["", " ", "-0", "1e3", "0x10", "\uff18", "None", "1.0", "99999999999999999999x"]
)
def test_bad_labels_never_raise(value: str) -> None:
    labels = {
        k: value
        for k in (
            "nvidia.com/gpu.count",
            "rpcjob.dev/gpus",
            "nvidia.com/gpu.memory",
            "nvidia.com/gpu.replicas",
            "nvidia.com/mig.strategy",
            "nvidia.com/gpu.sharing-strategy",
            "nvidia.com/gpu.present",
            "nvidia.com/mig-1g.5gb.count",
        )
    }
    got = parse_node_labels(labels, "junk")
    assert isinstance(got, NodeGPUs)
    assert got.warnings  # every junk value is reported
    assert all("junk" in w for w in got.warnings)


def test_no_node_name_keeps_messages_readable() -> None:
    got = parse_node_labels({"nvidia.com/gpu.count": "eight"})
    assert got.warnings == (
        "node label nvidia.com/gpu.count='eight' is not a non-negative integer; fix the label "
        "or set rpcjob.dev/gpus; rpcjob ignores it and trusts the GPUs the container sees",
    )
