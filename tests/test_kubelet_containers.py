"""localexec.containers: a container spec + pod -> a local process (pure parts, table-driven)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TypeVar

import pytest

from rpcjob import contract
from rpcjob_operator.localexec.containers import LocalContainer, process_spec, rewrite_paths
from rpcjob_operator.localexec.podenv import ContainerConfigError, PodInfo, expand, resolve_env

POD = PodInfo(
    name="job-worker-0",
    namespace="ns",
    uid="u-1",
    node_name="node-a",
    pod_ip="127.0.0.7",
    labels={"rpcjob.dev/role": "worker"},
    annotations={"a": "b"},
)
MOUNTS = {
    "/var/run/rpcjob": "/tmp/pod/sock",
    "/var/run/rpcjob/deep": "/tmp/other",
    "/data": "/tmp/d",
}

C = TypeVar("C", bound=LocalContainer)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/var/run/rpcjob", "/tmp/pod/sock"),
        ("/var/run/rpcjob/sidecar.sock", "/tmp/pod/sock/sidecar.sock"),
        ("/var/run/rpcjob/deep/x", "/tmp/other/x"),  # longest mount wins
        ("--socket=/var/run/rpcjob/s.sock", "--socket=/tmp/pod/sock/s.sock"),
        ("/data:/var/run/rpcjob", "/tmp/d:/tmp/pod/sock"),
        ("/var/run/rpcjobx", "/var/run/rpcjobx"),  # not a path boundary
        ("/x/data", "/x/data"),  # not at the start of a path
        ("/data.txt", "/data.txt"),
    ],
)
def test_rewrite_paths(value: str, expected: str) -> None:
    assert rewrite_paths(value, MOUNTS) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$(A)-x", "1-x"),
        ("$$(A)", "$(A)"),
        ("$(MISSING)", "$(MISSING)"),
        ("$A", "$A"),
    ],
)
def test_expand(value: str, expected: str) -> None:
    assert expand(value, {"A": "1"}) == expected


def test_resolve_env_downward_api_and_expansion() -> None:
    container = {
        "name": "worker",
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {
                "name": "ROLE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rpcjob.dev/role']"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "ADDR", "value": "$(IP):9464"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
        ],
    }
    env = resolve_env(container, POD, lookup=lambda kind, name, key: f"{kind}/{name}/{key}")
    assert env == {
        "POD": "job-worker-0",
        "NS": "ns",
        "UID": "u-1",
        "IP": "127.0.0.7",
        "NODE": "node-a",
        "ROLE": "worker",
        "CPU": "2",
        "MEM": "1024",
        "ADDR": "127.0.0.7:9464",
        "PW": "secret/s/password",
    }


@pytest.mark.parametrize(
    ("container", "message"),
    [
        (
            {
                "name": "c",
                "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}],
            },
            "container 'c': env valueFrom.fieldRef.fieldPath 'spec.bogus' is not supported",
        ),
        (
            {
                "name": "c",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            },
            "container 'c': env 'X' refers to secret 's' key 'k', which does not exist",
        ),
    ],
)
def test_resolve_env_errors_name_the_field(container: dict, message: str) -> None:
    with pytest.raises(ContainerConfigError, match="^" + message.replace("(", r"\(")):
        resolve_env(container, POD, lookup=lambda *a: None)


def test_process_spec_rewrites_mounts_and_exports_the_mapping(tmp_path: object) -> None:
    container = {
        "name": "worker",
        "image": "any",
        "command": ["python3", "-m", "app"],
        "args": ["--sock=$(SOCK)"],
        "workingDir": "/workspace",
        "env": [{"name": "SOCK", "value": "/var/run/rpcjob/sidecar.sock"}],
        "volumeMounts": [{"name": "sock", "mountPath": "/var/run/rpcjob"}],
    }
    spec = process_spec(
        container,
        POD,
        {"sock": f"{tmp_path}/sock"},
        pod_root=str(tmp_path),
        parent_env={"PATH": "/usr/bin", "KUBERNETES_SERVICE_HOST": "x", "RPCJOB_ROLE": "leak"},
    )
    assert spec.argv == [sys.executable, "-m", "app", f"--sock={tmp_path}/sock/sidecar.sock"]
    assert spec.env["SOCK"] == f"{tmp_path}/sock/sidecar.sock"
    assert spec.env[contract.ENV_LOCAL_POD_IP] == "127.0.0.7"
    mounts = json.loads(spec.env[contract.ENV_LOCAL_MOUNTS])
    assert mounts == {"/var/run/rpcjob": f"{tmp_path}/sock"}
    assert (
        contract.local_path("/var/run/rpcjob/sidecar.sock", spec.env)
        == f"{tmp_path}/sock/sidecar.sock"
    )
    assert "KUBERNETES_SERVICE_HOST" not in spec.env and "RPCJOB_ROLE" not in spec.env
    assert spec.cwd == f"{tmp_path}/workspace"


def test_image_entrypoints_and_missing_command() -> None:
    c = {"name": "side", "image": "ghcr.io/x/rpcjob-sidecar:0.1.0"}
    spec = process_spec(
        c, POD, {}, pod_root="/tmp", image_entrypoints={"rpcjob-sidecar": ["python3", "-V"]}
    )
    assert spec.argv == [sys.executable, "-V"]
    with pytest.raises(
        ContainerConfigError,
        match=re.escape("no command, and image 'ghcr.io/x/rpcjob-sidecar:0.1.0' has no known"),
    ):
        process_spec(c, POD, {}, pod_root="/tmp")
    with pytest.raises(ContainerConfigError, match="volumeMount 'v' names no volume"):
        process_spec(
            {"name": "c", "command": ["true"], "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
            POD,
            {},
            pod_root="/tmp",
        )


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import sys; sys.exit(7)", 7),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137),
    ],
)
def test_exit_codes_follow_container_runtimes(tmp_path: object, code: str, expected: int) -> None:
    spec = process_spec(
        {"name": "c", "command": ["python3", "-c", code]}, POD, {}, pod_root=str(tmp_path)
    )
    proc = LocalContainer("c", spec)
    proc.start()
    assert proc.proc is not None
    proc.proc.wait(30)
    assert proc.poll() == expected


def _started_and_up(kind: type[C], code: str, tmp_path: object) -> C:
    """Container ``c`` running ``python3 -c code``, once it printed "up" (its handlers are set)."""
    spec = process_spec(
        {"name": "c", "command": ["python3", "-c", code]}, POD, {}, pod_root=str(tmp_path)
    )
    log = f"{tmp_path}/c.log"
    proc = kind("c", spec, log)
    proc.start()
    deadline = time.monotonic() + 30
    while "up" not in Path(log).read_text() and time.monotonic() < deadline:
        time.sleep(0.02)  # polling a condition with a deadline
    return proc


def test_stop_escalates_to_sigkill_after_grace(tmp_path: object) -> None:
    ignore = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    proc = _started_and_up(LocalContainer, ignore, tmp_path)
    assert proc.stop(grace=0.3) == 137


def test_terminate_then_stop_sends_sigterm_once(tmp_path: object) -> None:
    # The kubelet's deletion path calls terminate() and then stop(grace): like a real kubelet
    # the process must get one SIGTERM. A second one can land while it is already exiting
    # (Python restores the default handler at shutdown) and turn a clean exit 0 into 143.
    sent: list[int] = []

    class Recording(LocalContainer):
        def _signal(self, sig: int) -> None:
            sent.append(sig)
            super()._signal(sig)

    drain = (
        "import signal, sys, time\n"
        "def on_term(*a):\n"
        "    time.sleep(0.3); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print('up', flush=True); time.sleep(60)\n"
    )
    proc = _started_and_up(Recording, drain, tmp_path)
    proc.terminate()
    assert proc.stop(grace=10) == 0
    assert sent.count(signal.SIGTERM) == 1, sent


def test_image_workdirs_stand_in_for_the_images_workdir(tmp_path: Path) -> None:
    c = {
        "name": "w",
        "image": "ghcr.io/rpcjob/example-ps:0.1.0",
        "command": ["python3", "-m", "app"],
    }
    spec = process_spec(c, POD, {}, pod_root=str(tmp_path), default_cwd="/",
                        image_workdirs={"example-ps": str(tmp_path)})  # fmt: skip
    assert spec.cwd == str(tmp_path)
    other = process_spec({**c, "image": "other"}, POD, {}, pod_root=str(tmp_path), default_cwd="/")
    assert other.cwd == "/"


# A starter process: runs one LocalContainer (a shell with a background grandchild), prints the
# container's pid and the grandchild's, then sleeps until killed.
STARTER = """
import sys, time
from pathlib import Path
from rpcjob_operator.localexec.containers import LocalContainer, process_spec
from rpcjob_operator.localexec.podenv import PodInfo
pod = PodInfo(name="p", namespace="ns", uid="u", node_name="n", pod_ip="127.0.0.1")
log = sys.argv[1]
spec = process_spec({"name": "c", "command": ["bash", "-c", "sleep 600 & echo $!; wait"]},
                    pod, {}, pod_root=sys.argv[2])
c = LocalContainer("c", spec, log)
c.start()
deadline = time.monotonic() + 60
while not Path(log).read_text().strip() and time.monotonic() < deadline:
    time.sleep(0.02)  # polling a condition with a deadline
print(c.pid, Path(log).read_text().strip(), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent has not reaped it yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_containers_die_with_their_starter_even_on_sigkill(tmp_path: Path) -> None:
    import subprocess

    from etcd_waits import wait_until

    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path / "c.log"), str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert starter.stdout is not None
        container, grandchild = (int(x) for x in starter.stdout.readline().split())
        assert _alive(container) and _alive(grandchild)
        # the container keeps its own command line (the launcher execs it in place)
        assert Path(f"/proc/{container}/cmdline").read_bytes().startswith(b"bash\0-c\0")
        starter.kill()
        starter.wait(30)
        wait_until(lambda: not _alive(container) and not _alive(grandchild), 30,
                   "the container and its child to die with their starter")  # fmt: skip
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(30)


def test_the_lifeline_watcher_leaves_with_its_container(tmp_path: Path) -> None:
    from etcd_waits import wait_until

    spec = process_spec({"name": "c", "command": ["sleep", "600"]}, POD, {},
                        pod_root=str(tmp_path))  # fmt: skip
    proc = LocalContainer("c", spec)
    proc.start()
    assert proc.pid is not None
    pgid = proc.pid

    def group(field: int = 2, value: int = pgid) -> list[int]:
        """Live processes whose stat field (2: pgid, 1: ppid) is ``value``."""
        out = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value and fields[0] != "Z":
                out.append(int(entry))
        return out

    wait_until(lambda: len(group()) == 2, 30, "the container and its watcher")
    assert group(1, proc.pid) == []  # the watcher is no child of the container
    assert proc.stop(grace=5) == 143
    wait_until(lambda: group() == [], 30, "the watcher to leave with its container")
