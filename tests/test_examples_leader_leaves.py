"""The examples' followers end cleanly however early their leader leaves.

A trainer (actor) that joins while its server (learner) is finishing sees the leader listed by
``rpcjob.wait_for_member`` and can lose it before its first call. That is the end of the job,
not a failure: the follower must exit 0, or the finishing job reports a failed pod. Here the
leader leaves in exactly that window: the follower's ``wait_for_member`` returns, then waits
until the leader's graceful leave has removed it, then the example's code goes on. Real torch
RPC processes in a dynamic group (no sidecar: the examples' role functions use torch directly).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from forked import stay_and_leave

from rpcjob_operator.localexec.etcd_server import free_port

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time
url, name, rank, seen, folder, leader, fn = sys.argv[1:8]
sys.path.insert(0, folder)
import torch.distributed.rpc as rpc
import rpcjob
import app

opts = rpc.TensorPipeRpcBackendOptions(init_method=url, num_worker_threads=4)
rpc.init_rpc(name, rank=int(rank), world_size=None, rpc_backend_options=opts)
if name == leader:
    deadline = time.monotonic() + 120
    while not os.path.exists(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    rpc.shutdown()  # graceful: the follower stays
    sys.exit(0)

real_wait = rpcjob.wait_for_member
role = leader.rpartition("_")[0]


def wait_then_lose_the_leader(wanted, timeout=120.0):
    found = real_wait(wanted, timeout)
    open(seen, "w").close()
    deadline = time.monotonic() + 120
    while rpcjob.members(role) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


rpcjob.wait_for_member = wait_then_lose_the_leader
code = getattr(app, fn)(name)
rpc.shutdown()
os.write(1, (json.dumps({"code": code}) + "\n").encode())  # one write: see test_worker_kit
"""


@pytest.mark.slow  # two torch RPC processes
@pytest.mark.parametrize(
    ("example", "leader", "fn", "said"),
    [
        ("parameter_server", "ps_0", "train", "worker_0: server has left (RuntimeError); leaving"),
        ("actor_learner", "learner_0", "act", "worker_0: learner finished; leaving"),
    ],
)
def test_a_follower_whose_leader_left_before_its_first_call_exits_0(
    tmp_path: Path, example: str, leader: str, fn: str, said: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    folder = str(REPO / "examples" / example)
    url, seen = f"tcp://127.0.0.1:{free_port()}", str(tmp_path / "seen")
    args = [seen, folder, leader, fn]
    got, out = stay_and_leave(str(script), [url, "worker_0", "0", *args], [url, leader, "1", *args])
    assert said in out, out
    assert got == {"code": 0}
