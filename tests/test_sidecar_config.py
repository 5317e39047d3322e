"""Bad input to rpcjob-sidecar: every error names the variable and the fix (pure config, labels
sources, and the real process's exit code and message)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from podkit import Job, free_port, next_ip

from rpcjob import contract as c
from rpcjob.sidecar.config import ConfigError, load_config
from rpcjob.sidecar.labels_source import (
    LabelsError,
    labels_from_api,
    labels_from_file,
    read_node_labels,
)

GOOD = {
    c.ENV_NAMESPACE: "ns",
    c.ENV_JOB_NAME: "j",
    c.ENV_JOB_UID: "u1",
    c.ENV_ROLE: "worker",
    c.ENV_INDEX: "3",
    c.ENV_POD_IP: "10.0.0.7",
    c.ENV_ETCD_ENDPOINTS: "10.0.0.1:2379,10.0.0.2:2379",
    c.ENV_SLOTS: json.dumps({"worker": 8, "driver": 1}),
}


def test_good_config_and_defaults() -> None:
    cfg = load_config(GOOD)
    assert cfg.worker_name == "worker_3" and cfg.pod_name == "j-worker-3"
    assert cfg.etcd.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379")
    assert (cfg.http_host, cfg.http_port) == ("10.0.0.7", c.SIDECAR_HTTP_PORT)
    assert cfg.lease_ttl == c.DEFAULT_LEASE_TTL and cfg.rank_space == c.DEFAULT_RANK_SPACE
    assert cfg.socket == c.socket_path()
    assert cfg.keys.root == "/rpcjob/ns/j/u1/"


def test_password_is_never_in_the_repr() -> None:
    cfg = load_config({**GOOD, c.ENV_ETCD_USER: "root", c.ENV_ETCD_PASSWORD: "s3cret-pw"})
    assert "s3cret-pw" not in repr(cfg)
    assert cfg.etcd.password == "s3cret-pw"


# Each variable, bad values for it and the words its error has besides the variable's name.
BAD: dict[str, list[tuple[str, list[str]]]] = {
    c.ENV_NAMESPACE: [("", ["not set"])],
    c.ENV_JOB_UID: [("", [])],
    c.ENV_ROLE: [("my-role", ["'-'"]), ("Worker", ["lowercase"])],
    c.ENV_INDEX: [("", ["not set"]), ("x", ["integer"])],
    c.ENV_WORKER_NAME: [("worker-3", ["'_'"]), ("worker_4", ["'worker_3'"])],
    c.ENV_POD_IP: [("", ["downward API"])],
    c.ENV_ETCD_ENDPOINTS: [("", []), ("etcd", ["host:port"])],
    c.ENV_ETCD_CERT: [(__file__, [c.ENV_ETCD_KEY, "both"])],  # without a key
    c.ENV_ETCD_CA: [("/nope/ca.pem", ["no such file"])],
    c.ENV_ETCD_USER: [("root", [c.ENV_ETCD_PASSWORD, "both"])],  # without a password
    c.ENV_SLOTS: [
        ("{worker: 8", ["JSON"]),
        ('{"driver": 1}', ["'worker'"]),
        ('{"worker": 2}', [c.ENV_INDEX, "maxReplicas"]),  # the index is beyond maxReplicas
    ],
    c.ENV_DEVICE_MAPS: [("on", ["'auto' or 'off'"])],
    c.ENV_RANK_SPACE: [("40000", ["int16"]), ("0", ["out of range"])],
    c.ENV_LEASE_TTL: [("ten", ["integer"])],
    c.ENV_HTTP_ADDR: [("10.0.0.7", ["host:port"])],
    c.ENV_RPC_TIMEOUT: [("-1", ["> 0"])],
}
CASES = [(name, value, words) for name, bad in BAD.items() for value, words in bad]


@pytest.mark.parametrize(("name", "value", "words"), CASES, ids=[f"{n}={v}" for n, v, _ in CASES])
def test_bad_config_names_the_variable(name: str, value: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config({**GOOD, name: value})
    for w in [name, *words]:
        assert w in str(e.value), (w, str(e.value))


def test_labels_file_errors(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match=c.ENV_NODE_LABELS_FILE + ".*cannot read"):
        labels_from_file(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a map\n")
    with pytest.raises(LabelsError, match="map of label name to value"):
        labels_from_file(str(bad))
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"metadata": {"labels": {"nvidia.com/gpu.count": "8"}}}))
    assert labels_from_file(str(node)) == {"nvidia.com/gpu.count": "8"}


def test_labels_json_and_api_errors() -> None:
    with pytest.raises(LabelsError, match=c.ENV_NODE_LABELS + " is not valid JSON"):
        read_node_labels("", "", "{bad")
    with pytest.raises(LabelsError, match=c.ENV_NODE_NAME):
        read_node_labels("", "", "")
    with pytest.raises(LabelsError, match="not running in a Kubernetes pod"):
        read_node_labels("node-1", "", "", env={})


# --- the real process ------------------------------------------------------------------------
def run_sidecar(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpcjob.sidecar.main"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def pod_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    job = Job(endpoint, tmp_path)
    ip = next_ip()
    return job.pod_env("worker", 0, ip, str(tmp_path / "s.sock"), f"{ip}:{free_port(ip)}")


def test_process_exits_2_on_bad_role(tmp_path: Path, etcd_endpoint: str) -> None:
    r = run_sidecar({**pod_env(tmp_path, etcd_endpoint), c.ENV_ROLE: "bad-role"})
    assert r.returncode == 2
    assert "configuration error" in r.stderr and c.ENV_ROLE in r.stderr


def test_process_exits_2_on_malformed_labels(tmp_path: Path, etcd_endpoint: str) -> None:
    r = run_sidecar({**pod_env(tmp_path, etcd_endpoint), c.ENV_NODE_LABELS: "{bad"})
    assert r.returncode == 2 and c.ENV_NODE_LABELS in r.stderr


def test_process_exits_1_when_etcd_unreachable_without_leaking_the_password(
    tmp_path: Path, etcd_endpoint: str
) -> None:
    env = pod_env(tmp_path, etcd_endpoint)
    dead = f"127.0.0.1:{free_port('127.0.0.1')}"
    env.update({c.ENV_ETCD_ENDPOINTS: dead, c.ENV_ETCD_USER: "root",
                c.ENV_ETCD_PASSWORD: "pw-must-not-leak"})  # fmt: skip
    r = run_sidecar(env, timeout=120)
    assert r.returncode == 1
    assert "etcd is unreachable" in r.stderr and dead in r.stderr
    assert c.ENV_ETCD_ENDPOINTS in r.stderr
    assert "pw-must-not-leak" not in r.stderr + r.stdout


def test_labels_unavailable_is_a_warning_not_a_crash(tmp_path: Path, etcd_endpoint: str) -> None:
    env = {c.ENV_NODE_LABELS: "", c.ENV_NODE_NAME: ""}
    job = Job(etcd_endpoint, tmp_path, env=env)
    try:
        pod = job.pod("worker", 0)
        assert pod.fake_worker().identity()["devices"] == []
        assert f"{c.ENV_NODE_NAME} is not set" in pod.sidecar_log.read_text()
    finally:
        job.close()


def test_bad_gpu_labels_are_warnings_in_identity_not_a_crash(
    tmp_path: Path, etcd_endpoint: str
) -> None:
    job = Job(etcd_endpoint, tmp_path, env={c.ENV_NODE_LABELS: '{"nvidia.com/gpu.count": "eight"}'})
    try:
        pod = job.pod("worker", 0)
        ident = pod.fake_worker().identity()
        assert any("nvidia.com/gpu.count='eight'" in x for x in ident["warnings"])
        assert ident["devices"] == []
        assert ": no usable GPU labels (see the warnings)" in pod.sidecar_log.read_text()
    finally:
        job.close()


# --- in cluster: GET /api/v1/nodes/<node> over TLS with the service-account token ------------
@pytest.fixture
def fake_apiserver(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """A real HTTPS server answering like the API server for two nodes (token checked)."""
    from etcd_tls import make_tls

    tls = make_tls(tmp_path / "tls")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok-123\n")
    (sa / "ca.crt").write_text(Path(tls.ca).read_text())
    nodes = {"gpu-node": {"nvidia.com/gpu.count": "8"}, "locked": None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[1]
            if self.headers.get("Authorization") != "Bearer tok-123":
                code, body = 401, {}
            elif name not in nodes:
                code, body = 404, {"kind": "Status", "code": 404}
            elif nodes[name] is None:
                code, body = 403, {"kind": "Status", "code": 403}
            else:
                code, body = (
                    200,
                    {"kind": "Node", "metadata": {"name": name, "labels": nodes[name]}},
                )
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.server_cert, tls.server_key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "127.0.0.1", int(srv.server_address[1]), sa
    srv.shutdown()
    srv.server_close()


def test_labels_from_the_kubernetes_api(fake_apiserver: tuple[str, int, Path]) -> None:
    host, port, sa = fake_apiserver
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port)}
    assert labels_from_api("gpu-node", env, sa_dir=sa) == {"nvidia.com/gpu.count": "8"}
    with pytest.raises(LabelsError, match=r"may not GET node 'locked' \(403\).*'get' on nodes"):
        labels_from_api("locked", env, sa_dir=sa)
    with pytest.raises(LabelsError, match=f"node 'gone' not found: check {c.ENV_NODE_NAME}"):
        labels_from_api("gone", env, sa_dir=sa)


def test_the_sidecar_never_imports_torch() -> None:
    code = (
        "import sys, rpcjob.sidecar.main, rpcjob.sidecar.daemon, rpcjob.sidecar.server; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
