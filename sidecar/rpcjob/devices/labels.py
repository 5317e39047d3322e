"""A Node's GPU labels, parsed into a `NodeGPUs` (pure, torch-free, never raises).

Label names and meanings follow NVIDIA GPU Feature Discovery (GFD); ``rpcjob.dev/gpus`` is our
own override. A malformed label never crashes the sidecar: it becomes a people-facing warning
(the sidecar turns warnings into a Warning event on its pod) and the documented fallback
(docs/devices.md) is used instead. A restarting sidecar would only fail the same way again,
so a crash loop would help nobody.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rpcjob import contract

LABEL_PRESENT = "nvidia.com/gpu.present"
LABEL_COUNT = "nvidia.com/gpu.count"
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"
LABEL_FAMILY = "nvidia.com/gpu.family"
LABEL_MACHINE = "nvidia.com/gpu.machine"
LABEL_CLIQUE = "nvidia.com/gpu.clique"
LABEL_MIG_STRATEGY = "nvidia.com/mig.strategy"
LABEL_REPLICAS = "nvidia.com/gpu.replicas"
LABEL_SHARING = "nvidia.com/gpu.sharing-strategy"
LABEL_OVERRIDE = contract.NODE_LABEL_GPUS_OVERRIDE
# mixed strategy: one count label per MIG profile, e.g. nvidia.com/mig-3g.20gb.count
MIG_PROFILE_COUNT_RE = re.compile(
    r"^nvidia\.com/mig-(?P<profile>[0-9]+g\.[0-9]+gb(?:\+[a-z0-9.]+)?)\.count$"
)

MIG_STRATEGIES = ("none", "single", "mixed")
SHARING_STRATEGIES = ("none", "time-slicing", "mps")

_INT_RE = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class NodeGPUs:
    """What a Node's labels say about its GPUs.

    ``count`` is the number of GPU devices rpcjob may assume on the node: the override
    ``rpcjob.dev/gpus`` when valid, else ``nvidia.com/gpu.count``, else ``None`` (the labels say
    nothing usable: the container's visible GPUs and the role's request decide). Under
    ``mig.strategy=single`` GFD counts MIG devices, not physical GPUs.
    """

    node: str = ""
    present: bool = False  # nvidia.com/gpu.present == "true"
    count: int | None = None  # effective count (override wins), None = unknown
    labelled_count: int | None = None  # nvidia.com/gpu.count as parsed
    override: int | None = None  # rpcjob.dev/gpus as parsed
    product: str = ""
    memory_mib: int | None = None
    family: str = ""
    machine: str = ""
    clique: str = ""  # NVLink domain: "<fabric cluster uuid>.<clique id>"; "" = none
    mig_strategy: str = "none"  # none | single | mixed
    mig_profiles: Mapping[str, int] = field(default_factory=dict)  # "3g.20gb" -> 2 (mixed)
    replicas: int = 1  # > 1: each GPU advertised several times (shared)
    sharing_strategy: str = "none"  # none | time-slicing | mps
    warnings: tuple[str, ...] = ()

    @property
    def is_mig(self) -> bool:
        """Every nvidia.com/gpu device on this node is a MIG instance (strategy single).

        Under ``mixed`` nvidia.com/gpu still names whole GPUs; MIG slices are separate
        resources (nvidia.com/mig-<profile>), recognised from the device ids instead.
        """
        return self.mig_strategy == "single"

    @property
    def is_shared(self) -> bool:
        """GPUs are time-sliced or MPS-shared between pods."""
        return self.replicas > 1 or self.sharing_strategy in ("time-slicing", "mps")

    def describe(self) -> str:
        """One line for the sidecar's start log: what the labels say about this node's GPUs
        (the informational labels included; they drive nothing else)."""
        if self.count is None and not self.present:
            return "no usable GPU labels (see the warnings)" if self.warnings else "no GPU labels"
        unit = "MIG device(s)" if self.is_mig else "GPU(s)"
        n = "GPU count unknown" if self.count is None else f"{self.count} {unit}"
        if self.override is not None:
            n += f" ({LABEL_OVERRIDE})"
        memory = f"{self.memory_mib} MiB" if self.memory_mib is not None else ""
        what = [w for w in (self.product, memory, self.family, self.machine) if w]
        parts = [n + (": " + ", ".join(what) if what else "")]
        if self.mig_strategy != "none":
            profiles = ", ".join(f"{k} x{v}" for k, v in sorted(self.mig_profiles.items()))
            parts.append(f"MIG {self.mig_strategy}" + (f" ({profiles})" if profiles else ""))
        if self.is_shared:
            parts.append(f"shared ({self.sharing_strategy}, {self.replicas} per GPU)")
        if self.clique:
            parts.append(f"NVLink clique {self.clique}")
        return "; ".join(parts)


def _parse_count(
    labels: Mapping[str, str], key: str, fix: str, warnings: list[str], where: str = ""
) -> int | None:
    raw = labels.get(key)
    if raw is None:
        return None
    value = raw.strip()
    if not _INT_RE.match(value):
        warnings.append(f"node label {key}={raw!r}{where} is not a non-negative integer; {fix}")
        return None
    return int(value)


def _choice(
    labels: Mapping[str, str],
    label: str,
    allowed: Sequence[str],
    fallback: str,
    warnings: list[str],
    where: str,
    consequence: str,
) -> str:
    """A label with a fixed set of values: "none" when absent, ``fallback`` (and a warning
    saying the ``consequence``) when it holds something else."""
    raw = labels.get(label)
    if raw is None:
        return "none"
    value = raw.strip().lower()
    if value in allowed:
        return value
    warnings.append(
        f"node label {label}={raw!r}{where} is not one of {', '.join(allowed)}; {consequence}"
    )
    return fallback


def _mig(labels: Mapping[str, str], warnings: list[str], where: str) -> tuple[str, dict[str, int]]:
    """The MIG strategy and the per-profile counts (GFD's ``mig.strategy`` labels)."""
    mig = _choice(
        labels, LABEL_MIG_STRATEGY, MIG_STRATEGIES, "single", warnings, where,
        "rpcjob assumes MIG devices (strategy 'single') and declares no CUDA device maps for "
        "pods on this node; fix the label",
    )  # fmt: skip

    profiles: dict[str, int] = {}
    for key in sorted(labels):
        m = MIG_PROFILE_COUNT_RE.match(key)
        if m is None:
            continue
        n = _parse_count(labels, key, "rpcjob ignores this MIG profile", warnings, where)
        if n is not None:
            profiles[m.group("profile")] = n
    if profiles and mig != "mixed":
        warnings.append(
            f"MIG profile count labels ({', '.join(sorted(profiles))}){where} are set but "
            f"{LABEL_MIG_STRATEGY}={mig!r}; GFD sets them only under 'mixed'; check the GPU "
            "operator's MIG configuration"
        )
    return mig, profiles


def _sharing(labels: Mapping[str, str], warnings: list[str], where: str) -> tuple[int, str]:
    """How many times each GPU is advertised and the sharing strategy (time-slicing, MPS)."""
    replicas_n = _parse_count(
        labels,
        LABEL_REPLICAS,
        "it should be how many times each GPU is advertised; rpcjob assumes 1 (not shared)",
        warnings,
        where,
    )
    replicas = 1
    if replicas_n is not None:
        if replicas_n == 0:
            warnings.append(
                f"node label {LABEL_REPLICAS}=0{where} is not a valid replica count; "
                "rpcjob assumes 1 (not shared)"
            )
        else:
            replicas = replicas_n

    sharing = _choice(
        labels, LABEL_SHARING, SHARING_STRATEGIES, "time-slicing", warnings, where,
        "rpcjob treats the GPUs as shared",
    )  # fmt: skip
    if replicas > 1 and sharing == "none":
        # GFD always sets both; a bare replicas label still means shared GPUs.
        sharing = "time-slicing"
    return replicas, sharing


def parse_node_labels(labels: Mapping[str, str], node: str = "") -> NodeGPUs:
    """Parse a Node's labels. Never raises for bad labels: see ``NodeGPUs.warnings``."""
    warnings: list[str] = []
    where = f" on node {node}" if node else ""

    present_raw = labels.get(LABEL_PRESENT, "")
    present = present_raw.strip().lower() == "true"
    if present_raw and present_raw.strip().lower() not in ("true", "false"):
        warnings.append(
            f"node label {LABEL_PRESENT}={present_raw!r}{where} is not 'true' or 'false'; "
            "treating it as absent"
        )

    labelled = _parse_count(
        labels,
        LABEL_COUNT,
        f"fix the label or set {LABEL_OVERRIDE}; rpcjob ignores it and trusts the GPUs the "
        "container sees",
        warnings,
        where,
    )
    override = _parse_count(
        labels,
        LABEL_OVERRIDE,
        "it must be a whole number of GPUs; fix or remove the label (rpcjob ignores it and "
        f"uses {LABEL_COUNT})",
        warnings,
        where,
    )
    count = override if override is not None else labelled
    if override is not None and labelled is not None and override > labelled:
        warnings.append(
            f"node label {LABEL_OVERRIDE}={override}{where} is larger than "
            f"{LABEL_COUNT}={labelled}; rpcjob uses the override, but the node may not have "
            "that many GPUs"
        )

    memory = _parse_count(
        labels,
        LABEL_MEMORY,
        "it should be the GPU memory in MiB; rpcjob ignores it",
        warnings,
        where,
    )

    mig, profiles = _mig(labels, warnings, where)
    replicas, sharing = _sharing(labels, warnings, where)

    return NodeGPUs(
        node=node,
        present=present,
        count=count,
        labelled_count=labelled,
        override=override,
        product=labels.get(LABEL_PRODUCT, "").strip(),
        memory_mib=memory,
        family=labels.get(LABEL_FAMILY, "").strip(),
        machine=labels.get(LABEL_MACHINE, "").strip(),
        clique=labels.get(LABEL_CLIQUE, "").strip(),
        mig_strategy=mig,
        mig_profiles=profiles,
        replicas=replicas,
        sharing_strategy=sharing,
        warnings=tuple(warnings),
    )
