"""The e2e cluster's process kubelet (e2e/cluster/kubelet*.py), its pure parts: pod IPs from a
podCIDR, mount plans and start scripts, volume files, the Node object, log selection. Pods in
real namespaces: tests/test_process_kubelet_pods.py; against the real API server:
e2e/tests/test_kubelet_real.py."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import netns
from e2e.cluster.kubelet_logs import ContainerLogs, LogQuery, LogQueryError, select, stamp
from e2e.cluster.kubelet_node import node_object, pod_gpus
from e2e.cluster.kubelet_pod import local_argv
from e2e.cluster.kubelet_volumes import VolumeNotReady, volume_dir, volume_files
from e2e.cluster.mounts import (
    HostMountpoints,
    Mount,
    MountPlanError,
    plan_mounts,
    resolv_conf,
    start_script,
    wrap_argv,
)
from rpcjob_operator.localexec.podenv import PodInfo

# --- pod IPs ------------------------------------------------------------------------------


def test_ip_pool_hands_out_hosts_after_the_gateway_and_reuses_last() -> None:
    pool = netns.IpPool("10.244.3.0/30")
    assert pool.gateway == "10.244.3.1"
    assert pool.take() == "10.244.3.2"
    with pytest.raises(netns.NetworkError, match=r"no free pod IP left in 10\.244\.3\.0/30"):
        pool.take()
    pool.release("10.244.3.2")
    assert pool.take() == "10.244.3.2"


def test_ip_pool_does_not_reuse_a_released_address_at_once() -> None:
    pool = netns.IpPool("10.244.1.0/24")
    a, b = pool.take(), pool.take()
    pool.release(a)
    assert pool.take() not in (a, b)
    assert pool.in_use == 2


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.245.0.0/24", "outside the pod network 10.244.0.0/16; start the controller manager"),
        ("10.244.0.7/32", "has no room for a gateway and a pod"),
    ],
)
def test_ip_pool_rejects_bad_pod_cidrs(cidr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        netns.IpPool(cidr)


def test_interface_names_fit_ifnamsiz_and_are_stable() -> None:
    a = netns.short_name("rpv", "0f5e6c1d-aaaa-bbbb-cccc-000000000000")
    assert len(a) == 15 and a == netns.short_name("rpv", "0f5e6c1d-aaaa-bbbb-cccc-000000000000")
    assert a != netns.short_name("rpv", "0f5e6c1d-aaaa-bbbb-cccc-000000000001")


def test_pod_netns_commands_give_eth0_the_pod_network_prefix_and_a_default_route() -> None:
    cmds = netns.pod_netns_commands(netns.PodNet("ns1", "v1", "10.244.2.7"), "10.244.2.1")
    flat = [" ".join(c) for c in cmds]
    assert "-n ns1 addr add 10.244.2.7/16 dev eth0" in flat
    assert flat[-1] == "-n ns1 route add default via 10.244.2.1 dev eth0"
    assert flat[0] == "netns add ns1"


# --- mounts ---------------------------------------------------------------------------------


def test_plan_mounts_orders_parents_first_and_applies_subpath_and_readonly() -> None:
    container = {
        "name": "c",
        "volumeMounts": [
            {"name": "b", "mountPath": "/data/inner/"},
            {"name": "a", "mountPath": "/data"},
            {
                "name": "a",
                "mountPath": "/etc/app.conf",
                "subPath": "conf/app.conf",
                "readOnly": True,
            },
        ],
    }
    got = plan_mounts(container, {"a": "/v/a", "b": "/v/b"})
    assert got == [
        Mount("/v/a", "/data"),
        Mount("/v/b", "/data/inner"),
        Mount("/v/a/conf/app.conf", "/etc/app.conf", True),
    ]


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ({"name": "x", "mountPath": "/a"}, "volumeMounts\\[\\].name 'x' names no volume"),
        ({"name": "a", "mountPath": "rel"}, "mountPath 'rel' must be an absolute path"),
        ({"name": "a", "mountPath": "/"}, "mountPath '/' must be an absolute path other than /"),
        ({"name": "a", "mountPath": "/a", "subPath": "../up"}, "subPath '../up' must be"),
    ],
)
def test_plan_mounts_errors_name_the_field(mount: dict[str, Any], message: str) -> None:
    with pytest.raises(MountPlanError, match=message):
        plan_mounts({"name": "c", "volumeMounts": [mount]}, {"a": "/v/a"})


def test_start_script_mounts_then_sets_hostname_enters_workdir_and_execs() -> None:
    script = start_script(
        [Mount("/v/a b", "/data"), Mount("/v/t", "/var/run/secrets/x", True)],
        "/pod/hosts",
        "pod-0",
        "/data/work",
    )
    lines = script.splitlines()
    assert lines[0] == "set -e" and lines[-1] == 'exec "$@"'
    assert "mount --bind '/v/a b' /data" in lines
    assert "mount -o remount,bind,ro /var/run/secrets/x" in lines
    assert lines.index("mount --bind /pod/hosts /etc/hosts") < lines.index("hostname pod-0")
    assert "mkdir -p /data/work && cd /data/work" in lines


@pytest.mark.parametrize(
    ("spec", "dns", "want"),
    [
        ({}, "10.96.0.10", ["search ns.svc.cluster.local svc.cluster.local cluster.local",
                            "nameserver 10.96.0.10", "options ndots:5"]),
        ({}, None, None),
        ({"dnsPolicy": "Default"}, "10.96.0.10", None),
        ({"hostNetwork": True}, "10.96.0.10", None),
        ({"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}, "10.96.0.10",
         ["search ns.svc.cluster.local svc.cluster.local cluster.local",
          "nameserver 10.96.0.10", "options ndots:5"]),
        ({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"],
          "options": [{"name": "edns0"}]}}, "10.96.0.10", ["nameserver 1.2.3.4", "options edns0"]),
    ],
)  # fmt: skip
def test_resolv_conf_follows_dns_policy(
    spec: dict[str, Any], dns: str | None, want: list[str] | None
) -> None:
    got = resolv_conf(spec, "ns", dns, "cluster.local")
    assert (got.splitlines() if got is not None else None) == want


def test_wrap_argv_enters_the_netns_unless_host_network() -> None:
    assert wrap_argv("/run/netns/p", "/s.sh", ["x"])[:4] == ["setpriv", "--pdeathsig", "KILL", "--"]
    assert wrap_argv("/run/netns/p", "/s.sh", ["x"])[4:7] == ["nsenter", "--net=/run/netns/p", "--"]
    assert wrap_argv(None, "/s.sh", ["x", "y"])[4] == "unshare"
    assert wrap_argv(None, "/s.sh", ["x", "y"])[-3:] == ["/s.sh", "x", "y"]


def test_host_mountpoints_stay_until_their_last_owner_lets_go(tmp_path: Path) -> None:
    registry = tmp_path / "mountpoints.json"
    a, b = HostMountpoints(registry), HostMountpoints(registry)
    target = tmp_path / "var" / "run" / "secrets"
    a.ensure(str(target), is_file=False)
    b.ensure(str(target), is_file=False)
    a.release_all()
    assert target.is_dir()  # b's pods may still have it mounted
    b.release_all()
    assert not (tmp_path / "var").exists() and not registry.exists()


def test_host_mountpoints_of_a_dead_process_are_released(tmp_path: Path) -> None:
    registry = tmp_path / "mountpoints.json"
    target = tmp_path / "etc-app.conf"
    registry.write_text(json.dumps({str(target): ["999999999-1"]}))
    target.touch()
    mine = HostMountpoints(registry)
    mine.ensure(str(target), is_file=True)
    mine.release_all()
    assert not target.exists()


# --- volumes --------------------------------------------------------------------------------

POD = PodInfo("w-0", "jobs", "uid-1", "node-0", "10.244.0.2", "127.0.100.1", "runner")
SPEC = {"containers": [{"name": "main", "resources": {"limits": {"cpu": "1500m"}}}]}


class Objects:
    """A Source from plain data (what the API server would return)."""

    def __init__(self, secrets: Mapping[str, Mapping[str, bytes]], cms: Any = None) -> None:
        self.secrets, self.cms = secrets, cms or {}
        self.tokens: list[tuple[str | None, int]] = []
        self.claims: dict[str, str] = {}

    def secret(self, name: str) -> Mapping[str, bytes] | None:
        return self.secrets.get(name)

    def configmap(self, name: str) -> Mapping[str, bytes] | None:
        return self.cms.get(name)

    def token(self, audience: str | None, expiration: int) -> str:
        self.tokens.append((audience, expiration))
        return "tok"

    def claim_path(self, claim: str) -> str | None:
        return self.claims.get(claim)


ITEM_CA = {"key": "ca.crt", "path": "ca.crt"}
ITEM_NS = {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}


def test_projected_service_account_volume_has_token_ca_and_namespace() -> None:
    vol = {
        "name": "kube-api-access-x",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [ITEM_CA]}},
                {"downwardAPI": {"items": [ITEM_NS]}},
            ],
        },
    }  # fmt: skip
    src = Objects({}, {"kube-root-ca.crt": {"ca.crt": b"PEM"}})
    files = {f.path: f.data for f in volume_files(vol, POD, SPEC, src)}
    assert files == {"token": b"tok", "ca.crt": b"PEM", "namespace": b"jobs"}
    assert src.tokens == [(None, 3607)]


def test_secret_configmap_and_downward_volumes() -> None:
    src = Objects({"s": {"a": b"1", "b": b"2"}}, {"c": {"k": b"v"}})
    secret = {"name": "s", "secret": {"secretName": "s", "items": [{"key": "b", "path": "x/b"}]}}
    assert [(f.path, f.data) for f in volume_files(secret, POD, SPEC, src)] == [("x/b", b"2")]
    cm = {"name": "c", "configMap": {"name": "c", "defaultMode": 0o600}}
    assert [(f.path, f.mode) for f in volume_files(cm, POD, SPEC, src)] == [("k", 0o600)]
    down = {"name": "d", "downwardAPI": {"items": [
        {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}},
        {"path": "cpu", "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu",
                                             "divisor": "1m"}},
    ]}}  # fmt: skip
    assert {f.path: f.data for f in volume_files(down, POD, SPEC, src)} == {
        "ip": b"10.244.0.2",
        "cpu": b"1500",
    }


def test_missing_objects_wait_unless_optional() -> None:
    src = Objects({})
    with pytest.raises(VolumeNotReady, match="secret 'gone' not found"):
        volume_files({"name": "v", "secret": {"secretName": "gone"}}, POD, SPEC, src)
    optional = {"name": "v", "secret": {"secretName": "gone", "optional": True}}
    assert volume_files(optional, POD, SPEC, src) == []
    assert volume_files({"name": "v", "emptyDir": {}}, POD, SPEC, src) == []


def test_volume_dirs_of_claims_host_paths_and_the_pods_own(tmp_path: Path) -> None:
    src = Objects({})
    src.claims["data-etcd-0"] = str(tmp_path / "pv" / "etcd-0")
    claim = {"name": "data", "persistentVolumeClaim": {"claimName": "data-etcd-0"}}
    assert volume_dir(claim, "/pod/volumes", src) == str(tmp_path / "pv" / "etcd-0")
    assert (tmp_path / "pv" / "etcd-0").is_dir()
    unbound = {"name": "d", "persistentVolumeClaim": {"claimName": "data-etcd-1"}}
    with pytest.raises(VolumeNotReady, match="'data-etcd-1' is not bound to a volume"):
        volume_dir(unbound, "/pod/volumes", src)
    assert volume_dir({"name": "e", "emptyDir": {}}, "/pod/volumes", src) == "/pod/volumes/e"


def test_an_image_program_at_an_absolute_path_runs_the_hosts_program() -> None:
    env = {"PATH": os.environ["PATH"]}
    assert local_argv(["/usr/local/bin/no-such-dir/sh", "-c", "x"], env) == [
        shutil.which("sh"),
        "-c",
        "x",
    ]
    assert local_argv(["/bin/sh"], env) == ["/bin/sh"]
    assert local_argv(["/opt/none/not-a-program-anywhere"], env) == [
        "/opt/none/not-a-program-anywhere"
    ]


# --- node -----------------------------------------------------------------------------------


def test_node_object_reports_gpus_labels_and_only_an_internal_ip() -> None:
    node = node_object("node-1", {"nvidia.com/gpu.count": "2"}, "127.0.100.2", 2, "v1.35.0", None)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert node["status"]["addresses"] == [{"type": "InternalIP", "address": "127.0.100.2"}]
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-1"
    assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == "2"
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
    assert node["spec"] == {}


def test_pod_gpus_sums_containers_or_takes_the_largest_init() -> None:
    def c(n: int) -> dict[str, Any]:
        return {"resources": {"limits": {"nvidia.com/gpu": str(n)}}}

    assert pod_gpus({"spec": {"containers": [c(1), c(2)], "initContainers": [c(2)]}}) == 3
    assert pod_gpus({"spec": {"containers": [c(1)], "initContainers": [c(4)]}}) == 4


# --- logs -----------------------------------------------------------------------------------

RECORDS = [
    b"2026-01-01T00:00:01.000000000Z one",
    b"2026-01-01T00:00:02.500000000Z two",
    b"2026-01-01T00:00:03.000000000Z three",
]


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ({}, [b"one", b"two", b"three"]),
        ({"tailLines": "1"}, [b"three"]),
        ({"tailLines": "0"}, []),
        ({"sinceTime": "2026-01-01T00:00:02.5Z"}, [b"two", b"three"]),
        ({"tailLines": "1", "timestamps": "true"}, [RECORDS[2]]),
    ],
)
def test_select_filters_since_then_tail(query: dict[str, str], want: list[bytes]) -> None:
    assert select(RECORDS, LogQuery.parse(query)) == want


def test_since_seconds_counts_back_from_now() -> None:
    now = 1767225603.0  # 2026-01-01T00:00:03Z
    assert select(RECORDS, LogQuery.parse({"sinceSeconds": "1"}, now=now)) == [b"two", b"three"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"tailLines": "x"}, "tailLines='x': not an integer"),
        ({"tailLines": "-1"}, "tailLines=-1: must be >= 0"),
        ({"follow": "yes"}, "follow='yes': use true or false"),
        ({"sinceTime": "yesterday"}, "sinceTime='yesterday': use RFC 3339"),
    ],
)
def test_bad_log_queries_name_the_parameter(query: dict[str, str], message: str) -> None:
    with pytest.raises(LogQueryError, match=message):
        LogQuery.parse(query)


def test_logs_keep_one_file_per_incarnation_and_previous_picks_the_one_before(
    tmp_path: Path,
) -> None:
    logs = ContainerLogs(str(tmp_path))
    for text in (b"first\n", b"second\npartial"):
        logs.attach("c", io.BytesIO(text)).join(5)
    assert logs.pick("c", previous=False) == str(tmp_path / "logs" / "c" / "1.log")
    current = b"".join(logs.read(logs.pick("c", False) or "", LogQuery()))
    assert current == b"second\npartial\n"
    previous = b"".join(logs.read(logs.pick("c", True) or "", LogQuery(timestamps=True)))
    assert previous.endswith(b"Z first\n") and previous.startswith(stamp()[:4].encode())
    assert logs.pick("other", previous=True) is None
    # Waiting to restart (CrashLoopBackOff): current and previous are both the last one.
    assert logs.pick("c", previous=True, waiting=True) == logs.pick("c", previous=False)


def test_follow_streams_until_the_incarnation_ends(tmp_path: Path) -> None:
    logs = ContainerLogs(str(tmp_path))
    r, w = os.pipe()
    writer = logs.attach("c", os.fdopen(r, "rb"))
    path = logs.pick("c", False) or ""
    os.write(w, b"a\n")
    got = logs.read(path, LogQuery(follow=True), poll=0.01)
    assert next(got) == b"a\n"
    os.write(w, b"b\n")
    os.close(w)
    assert list(got) == [b"b\n"]
    writer.join(5)
    assert not logs.writing(path)
