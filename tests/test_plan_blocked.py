"""The pure planner: a pod the kubelet cannot start is reported, with why and the fix."""

from __future__ import annotations

from typing import Any

import pytest
from plan_kit import J, cond, event, events, pod, run, running, status

from rpcjob_operator.model import PodView

ROOT = (
    "container has runAsNonRoot and image will run as root "
    '(pod: "default/demo-worker-0", container: worker)'
)


def _waiting(reason: str, message: str, init: bool = False) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    name = "rpcjob-sidecar" if init else "worker"
    return {
        "metadata": {"name": "demo-worker-0", "uid": "u"},
        "status": {"phase": "Pending", key: [
            {"name": name, "state": {"waiting": {"reason": reason, "message": message}}}]},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "reason", "message"),
    [
        (_waiting("CreateContainerConfigError", ROOT), "CreateContainerConfigError",
         f"container worker: {ROOT}"),
        (_waiting("ImagePullBackOff", "Back-off pulling image", init=True), "ImagePullBackOff",
         "container rpcjob-sidecar: Back-off pulling image"),
        (_waiting("ContainerCreating", ""), "", ""),  # on its way: not blocked
    ],
)  # fmt: skip
def test_pod_view_reads_why_a_container_cannot_start(
    raw: dict[str, Any], reason: str, message: str
) -> None:
    v = PodView.from_pod(raw)
    assert (v.blocked_reason, v.blocked_message) == (reason, message)


def _blocked(idx: int, message: str = ROOT) -> PodView:
    return pod("worker", idx, "Pending", blocked_reason="CreateContainerConfigError",
               blocked_message=f"container worker: {message}")  # fmt: skip


def test_a_root_image_refused_by_run_as_non_root_says_how_to_fix_it() -> None:
    job = J(worker=2)
    p = run(job, [_blocked(0), _blocked(1)], None, status({"worker": [0, 1]}))
    c = cond(p, "PodsBlocked")
    assert c["status"] == "True" and c["reason"] == "CreateContainerConfigError"
    assert c["message"].startswith(
        f"pod demo-worker-0 cannot start (CreateContainerConfigError): container worker: {ROOT}"
    )
    assert "set securityContext.runAsUser: 0 (or runAsNonRoot: false)" in c["message"]
    assert c["message"].endswith("(and 1 more pod(s))")
    assert event(p, "PodBlocked").type == "Warning"
    # Same cause next cycle: no repeated event. Fixed (the pods run): the condition clears.
    again = run(job, [_blocked(0), _blocked(1)], None, p.status)
    assert "PodBlocked" not in events(again)
    fixed = run(job, running(0, 1), None, again.status)
    assert cond(fixed, "PodsBlocked")["status"] == "False"


def test_other_reasons_carry_the_kubelets_message_only() -> None:
    blocked = pod("worker", 0, "Pending", blocked_reason="ErrImagePull",
                  blocked_message="container worker: pull access denied")  # fmt: skip
    p = run(J(worker=1), [blocked], None, status({"worker": [0]}))
    assert cond(p, "PodsBlocked")["message"] == (
        "pod demo-worker-0 cannot start (ErrImagePull): container worker: pull access denied"
    )


def test_no_blocked_pod_no_condition() -> None:
    assert cond(run(J(worker=1), running(0), None, status({"worker": [0]})), "PodsBlocked") is None
