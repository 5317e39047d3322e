"""The membership guards (rpcjob.devices.agent) with real torch processes on CPU.

Three dynamic-RPC workers join, exchange tensors both ways, and the third leaves gracefully,
with the guards installed in every process (the same choreography as the GPU benchmark,
bench/gpu_bench.py --cpu; the CUDA version is tests/test_gpu_device_maps.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from forked import stay_and_leave
from test_gpu_device_maps import gpu_bench

from rpcjob_operator.localexec.etcd_server import free_port


@pytest.mark.slow
def test_guarded_join_and_leave_on_cpu(tmp_path: Path) -> None:
    res = gpu_bench(tmp_path / "res.json", "rpcjob", 1, 1, "--cpu", timeout=240)["rpcjob"]
    for worker in ("worker_0", "worker_1", "worker_2"):
        assert res[worker]["rc"] == 0, res
        assert "error" not in res[worker], res[worker]
    checks = {k: v for w in res.values() for k, v in w.items() if k[0].isupper()}
    assert len(checks) == 12, checks
    assert all(v == "ok" for v in checks.values()), checks
    # after worker_2 left, worker_0 still holds worker_1's (empty, CPU) reverse map
    assert json.loads(res["worker_0"]["reverse_maps_after_leave"]) == {"worker_1": {}}


def test_guards_module_imports_without_torch() -> None:
    code = "import sys, rpcjob.devices.agent; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


CALL_ALL = r"""
import socket, sys, time
from pathlib import Path
import torch.distributed.rpc as rpc
from rpcjob.devices.agent import call_all

def boom():
    raise KeyError("first failure")

def later_boom():
    raise ValueError("second failure")

def slow_touch(path):
    time.sleep(0.5)
    Path(path).touch()
    return "touched"

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
opts = rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}",
                                       _transports=["uv"], _channels=["basic"])
rpc.init_rpc("a", rank=0, world_size=None, rpc_backend_options=opts)
flag = sys.argv[1]
assert call_all([("a", pow, (2, 5)), ("a", slow_touch, (flag + ".ok",))]) == [32, "touched"]
try:
    call_all([("a", boom, ()), ("a", slow_touch, (flag,)), ("a", later_boom, ())])
except Exception as e:
    assert "first failure" in str(e), e
    assert Path(flag).exists(), "raised before every call had finished"
    print("RAISED-AFTER-ALL")
rpc.shutdown()
"""


@pytest.mark.slow
def test_call_all_waits_for_every_call_then_raises_the_first_error(tmp_path: Path) -> None:
    """The joiner's steps go to all members at once; a failure is raised (the first, in call
    order) only once no call is in flight, so torch's join error path never races them."""
    proc = subprocess.run(
        [sys.executable, "-c", CALL_ALL, str(tmp_path / "flag")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "RAISED-AFTER-ALL" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]


LATE_JOINED = r"""
import json, os, sys, time
import torch.distributed.rpc as rpc
import rpcjob
from rpcjob.devices import agent

url, name, rank, seen = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
agent.install_membership_guards([])
opts = rpc.TensorPipeRpcBackendOptions(init_method=url, num_worker_threads=2)
rpc.init_rpc(name, rank=rank, world_size=None, rpc_backend_options=opts)
if name == "peer_1":
    deadline = time.monotonic() + 120
    while not os.path.exists(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    rpc.shutdown()  # graceful: worker_0 stays
    sys.exit(0)
rpcjob.wait_for_member("peer", timeout=120)
got = {"present": agent.reapply("peer_1", 1, {}), "stale_rank": agent.reapply("peer_1", 7, {})}
got["listed"] = rpcjob.members()
# an EVICT of an older incarnation (rank 7) must not cut off the peer listed now (rank 1)
got["stale_evict"] = agent.evict("peer_1", 7)
got["kept"] = rpcjob.members()
got["reached"] = rpc.rpc_sync("peer_1", pow, args=(2, 3))
open(seen, "w").close()
deadline = time.monotonic() + 120
while rpcjob.members("peer") and time.monotonic() < deadline:
    time.sleep(0.05)
got["late"] = agent.reapply("peer_1", 1, {})  # the JOINED event arrives after the leave
got["after"] = rpcjob.members()
rpc.shutdown()  # tells every member it lists: a ghost peer_1 would make this fail
os.write(1, (json.dumps(got) + "\n").encode())  # one write: see test_worker_kit
"""


@pytest.mark.slow  # two torch RPC processes
def test_late_membership_events_neither_bring_back_nor_cut_off_a_peer(tmp_path: Path) -> None:
    """The sidecar's JOINED event for a peer can be applied after that peer has already left
    (it joined and left at once). Re-applying its device maps then must not re-add it: torch's
    join update would list a member nobody can reach, and this worker's own graceful leave
    would fail telling it (ECONNREFUSED). Likewise an EVICT of an older incarnation of a name
    must not cut off the incarnation listed now."""
    script = tmp_path / "late.py"
    script.write_text(LATE_JOINED)
    url, seen = f"tcp://127.0.0.1:{free_port()}", str(tmp_path / "seen")
    got, _ = stay_and_leave(str(script), [url, "worker_0", "0", seen], [url, "peer_1", "1", seen])
    assert got == {
        "present": True,
        "stale_rank": False,  # an older incarnation's event: not the member listed now
        "listed": ["peer_1", "worker_0"],
        "stale_evict": False,
        "kept": ["peer_1", "worker_0"],
        "reached": 8,
        "late": False,
        "after": ["worker_0"],
    }
