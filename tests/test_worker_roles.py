"""The helpers for application code (sidecar/rpcjob/worker/roles.py): ``rpcjob.members`` and
``rpcjob.wait_for_member`` in a real torch RPC process, and ``rpcjob.run_role``'s bad input.
The examples use all three under ``rpcjob run`` (tests/test_run_success.py, test_cli_run.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from forked import ForkedPopen, stay_and_leave

import rpcjob
from rpcjob import contract
from rpcjob_operator.localexec.etcd_server import free_port

CHILD = r"""
import json, os, sys
import torch.distributed.rpc as rpc
import rpcjob

opts = rpc.TensorPipeRpcBackendOptions(init_method=sys.argv[1], num_worker_threads=2)
rpc.init_rpc("worker_0", rank=0, world_size=None, rpc_backend_options=opts)  # dynamic, as in a pod
got = {"all": rpcjob.members(), "worker": rpcjob.members("worker"), "ps": rpcjob.members("ps"),
       "work": rpcjob.members("work"), "waited": rpcjob.wait_for_member("worker", timeout=5)}
try:
    rpcjob.wait_for_member("ps", timeout=0.3)
except TimeoutError as e:
    got["timeout"] = str(e)
rpc.shutdown()
os.write(1, (json.dumps(got) + "\n").encode())  # one write: see test_worker_kit
"""


@pytest.mark.slow  # a torch RPC process
def test_members_and_wait_for_member_in_a_torch_rpc_group(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = ForkedPopen(str(script), [f"tcp://127.0.0.1:{free_port()}"], dict(os.environ))
    try:
        code = proc.wait(120)
        out = proc.stdout.read()
    finally:
        proc.kill()
    assert code == 0, out
    got = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert got["all"] == got["worker"] == got["waited"] == ["worker_0"]
    assert got["ps"] == [] and got["work"] == []  # a role is the whole name before _<index>
    assert got["timeout"].startswith(
        "no member of role 'ps' joined the RPC group within 0.3 s: check that the job has that "
        "role and that its pods run"
    )


LEAVER = r"""
import json, os, sys, time
import torch.distributed.rpc as rpc
import rpcjob

name, rank, seen = sys.argv[2], int(sys.argv[3]), sys.argv[4]
opts = rpc.TensorPipeRpcBackendOptions(init_method=sys.argv[1], num_worker_threads=2)
rpc.init_rpc(name, rank=rank, world_size=None, rpc_backend_options=opts)
if name == "ps_0":
    deadline = time.monotonic() + 120
    while not os.path.exists(seen) and time.monotonic() < deadline:  # worker_0 saw ps_0
        time.sleep(0.05)
    rpc.shutdown()  # a graceful leave: worker_0 stays, and must stop listing ps_0
    sys.exit(0)
got = {"before": rpcjob.wait_for_member("ps", timeout=120)}
open(seen, "w").close()
deadline = time.monotonic() + 120
while rpcjob.members("ps") and time.monotonic() < deadline:
    time.sleep(0.05)
got["after"] = rpcjob.members("ps")
rpc.shutdown()
os.write(1, (json.dumps(got) + "\n").encode())  # one write: see test_worker_kit
"""


@pytest.mark.slow  # two torch RPC processes
def test_a_member_that_left_is_not_listed(tmp_path: Path) -> None:
    """A worker asking ``rpcjob.members`` whether its peer is gone gets the truth after the
    peer's graceful leave (the examples end this way: their servers wait for the workers to
    go, the workers tell a finished server from a broken one by it)."""
    script = tmp_path / "leaver.py"
    script.write_text(LEAVER)
    url = f"tcp://127.0.0.1:{free_port()}"
    seen = str(tmp_path / "seen")
    got, _ = stay_and_leave(str(script), [url, "worker_0", "0", seen], [url, "ps_0", "1", seen])
    assert got == {"before": ["ps_0"], "after": []}


def test_run_role_without_a_function_for_the_pods_role_fails_before_joining(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(contract.ENV_ROLE, "ps")
    monkeypatch.setenv(contract.ENV_SOCKET, "/nonexistent/rpcjob.sock")  # no join is tried
    with pytest.raises(ValueError) as err:
        rpcjob.run_role({"worker": lambda _name: 0})
    assert str(err.value) == (
        "RPCJOB_ROLE='ps': rpcjob.run_role() has no function for this role (it has ['worker']); "
        "give one for every role of the job"
    )


@pytest.mark.parametrize(
    ("name", "role"),
    [("worker_0", "worker"), ("ps_12", "ps"), ("driver", ""), ("worker_x", ""), ("Bad_0", "")],
)
def test_role_of_a_worker_name(name: str, role: str) -> None:
    """``members(role)`` and the member records read a name's role this way; a name that is not
    ``<role>_<index>`` (a foreign member) has no role instead of raising."""
    assert contract.role_of(name) == role
