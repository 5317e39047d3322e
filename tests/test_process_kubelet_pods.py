"""The process kubelet's pods in real namespaces, without an API server: two pods' network
namespaces on the shared bridge, a container's private mounts, a whole pod run by
ClusterPodRunner (volumes incl. the projected token, native sidecar, logs), and the kubelet API
serving those logs over HTTPS. Needs root, ``ip``, ``nsenter`` and ``unshare`` (CI is root)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import netns
from e2e.cluster.kubelet_api import KubeletApiServer, serving_cert
from e2e.cluster.kubelet_logs import ContainerLogs
from e2e.cluster.kubelet_pod import ClusterPodRunner, PodSandbox
from e2e.cluster.mounts import HostMountpoints, Mount, start_script, wrap_argv
from rpcjob_operator.localexec.etcd_server import free_port
from rpcjob_operator.localexec.podrunner import RunnerConfig
from tests.etcd_waits import wait_until


def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


pytestmark = pytest.mark.skipif(_can_netns() is not None, reason=str(_can_netns()))


def test_two_pod_netns_bind_one_port_and_reach_each_other(tmp_path: Path) -> None:
    gw, cidr = "10.244.250.1", 24
    netns.ensure_bridge(gw, cidr)
    nets: list[netns.PodNet] = []
    try:
        for i in range(2):
            nets.append(netns.create_pod_net(f"t-{os.getpid()}-{i}", f"10.244.250.{i + 2}", gw))
        serve = "import socket,sys; s=socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(); print('up', flush=True); c,_=s.accept(); c.sendall(sys.argv[1].encode()); c.close()"  # noqa: E501
        servers = [
            subprocess.Popen(
                ["nsenter", f"--net={n.path}", "--", "python3", "-c", serve, n.ip],
                stdout=subprocess.PIPE,
            )
            for n in nets
        ]
        for s in servers:
            assert s.stdout is not None and s.stdout.readline() == b"up\n"
        fetch = "import socket,sys; print(socket.create_connection((sys.argv[1], 8080), 10).recv(64).decode())"  # noqa: E501
        out = subprocess.run(
            ["nsenter", f"--net={nets[0].path}", "--", "python3", "-c", fetch, nets[1].ip],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert out.stdout.strip() == nets[1].ip
        # ... and from the host, through the node's gateway on the bridge (probes do this).
        host = subprocess.run(
            ["python3", "-c", fetch, nets[0].ip], capture_output=True, text=True, timeout=60
        )
        assert host.stdout.strip() == nets[0].ip
        for s in servers:
            s.wait(30)
    finally:
        for n in nets:
            netns.delete_pod_net(n)
        netns.release_bridge(gw, cidr)
    left = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert not any(n.netns in left for n in nets)


def test_start_script_mounts_a_volume_only_inside_the_container(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "token").write_text("secret-token")
    target = tmp_path / "mnt" / "serviceaccount"
    target.mkdir(parents=True)
    hosts = tmp_path / "hosts"
    hosts.write_text("10.244.0.9\tpod-x\n")
    script = tmp_path / "start.sh"
    script.write_text(start_script([Mount(str(vol), str(target), True)], str(hosts), "pod-x", "/"))
    cmd = f"cat {target}/token; echo; hostname; grep -c pod-x /etc/hosts; touch {target}/w 2>/dev/null || echo ro"  # noqa: E501
    out = subprocess.run(
        wrap_argv(None, str(script), ["sh", "-c", cmd]), capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["secret-token", "pod-x", "1", "ro"], out.stderr
    assert not (target / "token").exists()  # the host's view is untouched
    assert os.uname().nodename != "pod-x"


class Objects:
    """What the API server would hand the kubelet for this pod."""

    def secret(self, name: str) -> Mapping[str, bytes] | None:
        return {"k": b"secret-value"} if name == "s" else None

    def configmap(self, name: str) -> Mapping[str, bytes] | None:
        return {"ca.crt": b"CA"} if name == "kube-root-ca.crt" else None

    def token(self, audience: str | None, expiration: int) -> str:
        return "projected-token"

    def claim_path(self, claim: str) -> str | None:
        return None


SA = "/var/run/secrets/kubernetes.io/serviceaccount"
# Per process: a concurrent run of this test elsewhere on the host would otherwise co-own the
# host-wide mountpoint, and it would rightly stay when this run releases its claim.
SOCK = f"/var/run/rpcjob-kubelet-test-{os.getpid()}"
MAIN = (
    f"cat {SA}/token {SA}/namespace /etc/sec/k; echo; cat {SOCK}/side; hostname; pwd; "
    "ip -4 -o addr show eth0 | awk '{print $4}'; echo $MY_IP $KUBERNETES_SERVICE_HOST; "
    "grep nameserver /etc/resolv.conf; "
    # Until the test saw the sidecar's exec readiness probe pass (it then drops this file).
    f"while [ ! -e {SOCK}/seen-ready ]; do sleep 0.05; done"
)


def _pod() -> dict[str, Any]:
    sa_volume = {"projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},  # noqa: E501
    ]}}  # fmt: skip
    sock = {"name": "sock", "mountPath": SOCK}
    return {
        "metadata": {"name": "pod-a", "namespace": "jobs", "uid": f"uid-{os.getpid()}-runner"},
        "spec": {
            "nodeName": "node-0",
            "restartPolicy": "Never",
            "volumes": [
                {"name": "sock", "emptyDir": {}},
                {"name": "sec", "secret": {"secretName": "s"}},
                {"name": "kube-api-access-x", **sa_volume},
            ],
            "initContainers": [
                {
                    "name": "side",
                    "image": "rpcjob-sidecar",
                    "restartPolicy": "Always",
                    "command": ["sh", "-c", f"echo up > {SOCK}/side; exec sleep 600"],
                    # Runs in the container's mount namespace: the file is not on the host.
                    "readinessProbe": {
                        "exec": {"command": ["test", "-f", f"{SOCK}/side"]},
                        "periodSeconds": 0.1,
                    },
                    "volumeMounts": [sock],
                }
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["sh", "-c", MAIN],
                    "workingDir": SOCK,
                    "env": [
                        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                    ],
                    "volumeMounts": [
                        sock,
                        {"name": "sec", "mountPath": "/etc/sec", "readOnly": True},
                        {"name": "kube-api-access-x", "mountPath": SA, "readOnly": True},
                    ],
                }
            ],
        },
    }


def test_a_pod_runs_with_its_volumes_mounted_in_its_own_namespaces(tmp_path: Path) -> None:
    cfg = RunnerConfig(
        root=str(tmp_path / "pods"),
        default_cwd=str(tmp_path),
        image_entrypoints={},
        image_workdirs={},
        extra_env={"KUBERNETES_SERVICE_HOST": "10.96.0.1"},
        host_ip="127.0.100.9",
        rewrite_mounts=False,
    )
    pool = netns.IpPool("10.244.251.0/24")
    netns.ensure_bridge(pool.gateway, 24)
    mountpoints = HostMountpoints()
    net = netns.create_pod_net(f"uid-{os.getpid()}-runner", pool.take(), pool.gateway)
    statuses: list[dict[str, Any]] = []

    def record(status: dict[str, Any]) -> None:
        statuses.append(status)
        if status["initContainerStatuses"][0]["ready"]:
            Path(runner.volumes["sock"], "seen-ready").touch()

    try:
        sandbox = PodSandbox(net.path, Objects(), mountpoints, "10.96.0.10")
        runner = ClusterPodRunner(
            _pod(), net.ip, cfg, lambda _u, s: record(s), lambda: None, {}, sandbox=sandbox
        )
        runner.start()
        runner.join(120)
        assert not runner.is_alive()
        log = runner.logs.pick("main", previous=False)
        assert log is not None
        lines = [line.split(" ", 1)[1] for line in Path(log).read_text().splitlines()]
        assert lines == [
            "projected-tokenjobssecret-value",
            "up",
            "pod-a",
            SOCK,
            f"{net.ip}/16",
            f"{net.ip} 10.96.0.1",
            "nameserver 10.96.0.10",  # the kubelet's cluster DNS (dnsPolicy ClusterFirst)
        ]
        last = statuses[-1]
        assert last["phase"] == "Succeeded" and last["hostIP"] == "127.0.100.9"
        side = last["initContainerStatuses"][0]["state"]["terminated"]
        assert side["exitCode"] == 143  # the sidecar is stopped (SIGTERM) after the main ends
    finally:
        netns.delete_pod_net(net)
        netns.release_bridge(pool.gateway, 24)
        mountpoints.release_all()
    assert not os.path.exists(SOCK)  # the mountpoint made on the host is gone again


def test_kubelet_api_serves_container_logs_over_https(tmp_path: Path) -> None:
    logs = ContainerLogs(str(tmp_path))
    r, w = os.pipe()
    writer = logs.attach("main", os.fdopen(r, "rb"))
    os.write(w, b"one\ntwo\nthree\n")
    os.close(w)
    writer.join(10)
    path = logs.pick("main", False) or ""

    def resolve(ns: str, pod: str, container: str, previous: bool) -> tuple[ContainerLogs, str]:
        assert (ns, pod, container, previous) == ("jobs", "pod-a", "main", False)
        return logs, path

    port = free_port("127.0.0.1")
    cert = serving_cert("127.0.0.1", "node-x", tmp_path / "pki")
    server = KubeletApiServer("127.0.0.1", port, cert, resolve)
    server.start()
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    base = f"https://127.0.0.1:{port}/containerLogs/jobs/pod-a/main"
    try:
        with urllib.request.urlopen(base + "?tailLines=1", context=ctx, timeout=30) as resp:
            assert resp.read() == b"three\n"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "?tailLines=x", context=ctx, timeout=30)
        assert err.value.code == 400 and b"tailLines='x': not an integer" in err.value.read()
    finally:
        server.stop()


# The file exists before the port listens: once the startup probe passes, the main container
# must find it (and it cannot, were the main started before the probe passed).
LISTEN_LATE = (
    f"import socket, time; time.sleep(1.0); open('{SOCK}/listening', 'w').close(); "
    "s = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(); time.sleep(600)"
)


def test_a_sidecars_startup_probe_holds_the_containers_back(tmp_path: Path) -> None:
    """Native sidecar with a startupProbe: the main container starts only once it passed."""
    probe = {"tcpSocket": {"port": 8080}, "periodSeconds": 0.1, "failureThreshold": 100}
    sock = {"name": "sock", "mountPath": SOCK}
    pod = {
        "metadata": {"name": "pod-s", "namespace": "jobs", "uid": f"uid-{os.getpid()}-startup"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "sock", "emptyDir": {}}],
            "initContainers": [
                {"name": "side", "image": "python", "restartPolicy": "Always",
                 "startupProbe": probe, "command": ["python", "-c", LISTEN_LATE],
                 "volumeMounts": [sock]},
            ],
            "containers": [
                {"name": "main", "image": "python", "volumeMounts": [sock],
                 "command": ["sh", "-c", f"ls {SOCK}/listening"]},
            ],
        },
    }  # fmt: skip
    cfg = RunnerConfig(str(tmp_path / "pods"), str(tmp_path), {}, {}, {}, rewrite_mounts=False)
    pool = netns.IpPool("10.244.252.0/24")
    netns.ensure_bridge(pool.gateway, 24)
    mountpoints = HostMountpoints()
    net = netns.create_pod_net(pod["metadata"]["uid"], pool.take(), pool.gateway)
    statuses: list[dict[str, Any]] = []
    try:
        runner = ClusterPodRunner(
            pod, net.ip, cfg, lambda _u, s: statuses.append(s), lambda: None, {},
            sandbox=PodSandbox(net.path, Objects(), mountpoints),
        )  # fmt: skip
        runner.start()
        runner.join(120)
    finally:
        netns.delete_pod_net(net)
        netns.release_bridge(pool.gateway, 24)
        mountpoints.release_all()
    main = statuses[-1]["containerStatuses"][0]["state"]["terminated"]
    assert main["exitCode"] == 0  # the file was there: the sidecar had started
    sides = [s["initContainerStatuses"][0] for s in statuses]
    running = [s for s in sides if "running" in s["state"]]
    assert not running[0]["started"] and not running[0]["ready"]  # until its startup passed
    assert running[-1]["started"] and running[-1]["ready"]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # a zombie is dead too
    except FileNotFoundError:
        return True


def _argv0(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode()
    except FileNotFoundError:
        return ""


def _past_setpriv(pid: int) -> bool:
    # Right after Popen returns, the new process's cmdline can still read empty (8 of 40 tries
    # on a loaded machine): that is not past setpriv yet.
    argv0 = _argv0(pid)
    return argv0 != "" and os.path.basename(argv0) != "setpriv"


def test_a_container_dies_with_its_kubelet(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG (setpriv): a SIGKILLed kubelet leaves no pod processes behind."""
    script = tmp_path / "start.sh"
    script.write_text(start_script([], None, None, None))
    argv = wrap_argv(None, str(script), ["sleep", "600"])
    code = f"import subprocess, time; print(subprocess.Popen({argv!r}).pid, flush=True); time.sleep(600)"  # noqa: E501
    kubelet = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert kubelet.stdout is not None
    pid = int(kubelet.stdout.readline())
    assert not _gone(pid)
    # setpriv arms PDEATHSIG and then execs the container; a kubelet killed before that (a
    # busy machine can hold setpriv off the CPU that long) leaves an orphan nobody signals.
    wait_until(lambda: _gone(pid) or _past_setpriv(pid), timeout=60,
               what="setpriv to arm PDEATHSIG and exec the container")  # fmt: skip
    kubelet.kill()
    kubelet.wait()
    wait_until(lambda: _gone(pid), timeout=30, what=f"container process {pid} to die")


def test_pod_networks_of_a_dead_kubelet_are_reaped(tmp_path: Path) -> None:
    """SIGKILL skips stop(): the next kubelet on the host removes the dead one's netns/veths."""
    registry = tmp_path / "netns.json"
    netns.ensure_bridge("10.244.253.1", 24)
    try:
        mine = netns.create_pod_net(
            f"uid-{os.getpid()}-alive", "10.244.253.2", "10.244.253.1", registry
        )
        theirs = netns.create_pod_net(
            f"uid-{os.getpid()}-dead", "10.244.253.3", "10.244.253.1", registry
        )
        dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout
        table = json.loads(registry.read_text())
        table[theirs.netns][0] = dead.strip()  # as if that kubelet (process) had died
        registry.write_text(json.dumps(table))
        assert netns.reap_orphans(registry) == [theirs.netns]
        listed = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
        assert theirs.netns not in listed and mine.netns in listed
        netns.delete_pod_net(mine, registry)
        assert not registry.exists()
    finally:
        netns.release_bridge("10.244.253.1", 24)
