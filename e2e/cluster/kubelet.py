"""The process kubelet of the e2e cluster: a real Node against the real API server, and each
pod bound to it run as local processes in the pod's own network and mount namespaces.

``ProcessKubelet(kubeconfig, node_name, node_ip, pod_cidr, labels, gpus, work_dir)``:

* **Node**: registers ``node_name`` with the node's credentials (``system:node:<name>`` in
  ``system:nodes``: the Node authorizer and NodeRestriction apply), capacity incl.
  ``nvidia.com/gpu``, the caller's labels (GFD), InternalIP ``node_ip``, Ready, and renews its
  Lease in ``kube-node-lease``. Without ``pod_cidr`` it waits for the controller manager's.
* **Pods**: watches ``spec.nodeName=<node>`` and runs each pod with localexec's PodRunner
  (native sidecars first and last, probes, grace periods, restartPolicy, exit codes; here also
  startupProbe, and exec probes inside the container's namespaces), each pod
  in its own netns on the shared pod bridge (netns.py) and each container in its own mount
  namespace with the pod's volumes at their mountPaths (mounts.py), incl. the projected
  service-account token; ``KUBERNETES_SERVICE_HOST``/``PORT`` are the ``kubernetes`` Service's
  ClusterIP and port (see apiaddr.py); with ``router`` the bridge lives in that cluster's
  router namespace (router.py: kube-proxy, so Services work); with ``cluster_dns`` (the
  e2e cluster passes its kube-dns ClusterIP) pods get a resolv.conf per dnsPolicy.
* **Logs**: per container incarnation, timestamped, served on ``node_ip:10250``
  (kubelet_api.py) for ``kubectl logs`` with -f, --tail, --since, --timestamps, --previous.

Images map to local command environments (to be listed in docs/testing.md): a container runs
this machine's programs, never an image filesystem. ``command`` runs as given (``python``/
``python3`` is this interpreter); without ``command`` the image's entrypoint comes from
``IMAGE_ENTRYPOINTS`` (``rpcjob-sidecar`` -> ``rpcjob-sidecar``, ``rpcjob-operator`` ->
``rpcjob-operator``, ``etcd`` -> ``etcd``; matched on the name without registry and tag), and
a program at an absolute path this host lacks (``/usr/local/bin/etcd``) is the program of that
name on PATH; its WORKDIR from ``image_workdirs`` (each example image ``example-<folder>`` ->
that folder under examples/), else the repository root. Processes run as root; securityContext
is admitted by PodSecurity but not applied.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from rpcjob_operator.localexec.podrunner import RunnerConfig

from . import netns
from .kubelet_api import KubeletApiServer, LogsUnavailable, serving_cert
from .kubelet_client import NodeApi, PodSource, api_client
from .kubelet_logs import ContainerLogs
from .kubelet_node import GPU, KUBELET_PORT, lease_object, node_object, node_status, pod_gpus
from .kubelet_pod import ClusterPodRunner, PodSandbox
from .mounts import HostMountpoints

log = logging.getLogger("e2e.cluster.kubelet")
REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_ENTRYPOINTS: dict[str, list[str]] = {
    "rpcjob-sidecar": ["rpcjob-sidecar"],
    "rpcjob-operator": ["rpcjob-operator"],
    "etcd": ["etcd"],
}
HEARTBEAT = 10.0  # seconds between Lease renewals (the kubelet's default)
STATUS_EVERY = 6  # heartbeats between node status updates
TERMINAL = ("Succeeded", "Failed")


def example_workdirs() -> dict[str, str]:
    """examples/<folder>/ is the WORKDIR of image ``example-<folder with '-'>``."""
    return {
        "example-" + d.name.replace("_", "-"): str(d)
        for d in sorted((REPO_ROOT / "examples").glob("*/"))
        if (d / "app.py").exists()
    }


class PodEntry:
    def __init__(self, pod: dict[str, Any], runner: ClusterPodRunner, net: netns.PodNet | None):
        self.pod = pod
        self.runner = runner
        self.net = net
        self.deleted = False


class ProcessKubelet:
    def __init__(
        self,
        api_kubeconfig: Path,
        node_name: str,
        node_ip: str,
        pod_cidr: str | None,
        labels: Mapping[str, str],
        gpus: int,
        work_dir: Path,
        *,
        port: int = KUBELET_PORT,
        image_entrypoints: Mapping[str, Sequence[str]] | None = None,
        image_workdirs: Mapping[str, str] | None = None,
        pod_env: Mapping[str, str] | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 10.0,
        cluster_dns: str | None = None,
        cluster_domain: str = "cluster.local",
        router: str | None = None,
    ) -> None:
        self.dns = (cluster_dns, cluster_domain)
        self.router = router
        self.name, self.node_ip, self.pod_cidr = node_name, node_ip, pod_cidr
        self.labels, self.gpus, self.port = dict(labels), gpus, port
        self.work_dir = Path(work_dir)
        self.api = NodeApi(api_client(Path(api_kubeconfig)))
        self.cfg = RunnerConfig(
            root=str(self.work_dir / "pods"),
            default_cwd=str(REPO_ROOT),
            image_entrypoints={**IMAGE_ENTRYPOINTS, **(image_entrypoints or {})},
            image_workdirs={**example_workdirs(), **(image_workdirs or {})},
            extra_env=dict(pod_env or {}),
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            lookup=self.api.lookup,
            lookup_all=self.api.lookup_all,
            host_ip=node_ip,
            rewrite_mounts=False,
        )
        self.pods: dict[str, PodEntry] = {}  # uid -> entry
        self.gpu_used: dict[str, list[int]] = {}  # uid -> device indices
        self.events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self.mountpoints = HostMountpoints()
        self.pool: netns.IpPool | None = None
        self.server: KubeletApiServer | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> ProcessKubelet:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            cert = serving_cert(self.node_ip, self.name, self.work_dir / "pki")
            self.server = KubeletApiServer(self.node_ip, self.port, cert, self._resolve_logs)
            self.server.start()
            version = str(self.api.call("GET", "/version")["gitVersion"])
            self._register(version)
            for orphan in netns.reap_orphans():
                log.info("kubelet %s: removed %s, left by a kubelet that died", self.name, orphan)
            self.pool = netns.IpPool(self.pod_cidr or self._wait_pod_cidr(time.monotonic() + 60))
            netns.ensure_bridge(self.pool.gateway, self.pool.network.prefixlen, self.router)
            self.cfg.extra_env = {**self._service_env(), **self.cfg.extra_env}
            self._renew_lease()
        except BaseException:
            self.stop()
            raise
        for target, name in ((self._heartbeat, "heartbeat"), (self._watch_pods, "watch"),
                             (self._loop, "pods")):  # fmt: skip
            t = threading.Thread(target=target, name=f"kubelet-{self.name}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stop every pod's processes, then remove their namespaces, interfaces, mountpoints
        and the work dir's pod directories; the Node object stays (the cluster owns it)."""
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        self.events.put(None)
        for t in self._threads:
            # The watch thread notices the stop at its next event or server timeout (daemon).
            t.join(1 if t.name.endswith("-watch") else 15)
        entries = list(self.pods.values())
        for e in entries:
            e.runner.stop_for_shutdown(grace)
        for e in entries:
            e.runner.join(grace + 10)
            self._teardown(e)
        self.pods.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.pool is not None:
            netns.release_bridge(self.pool.gateway, self.pool.network.prefixlen, self.router)
        self.mountpoints.release_all()
        shutil.rmtree(self.work_dir / "pods", ignore_errors=True)

    # --- node -------------------------------------------------------------------------------
    def _register(self, version: str) -> None:
        self.version = version
        obj = node_object(
            self.name, self.labels, self.node_ip, self.gpus, version, self.pod_cidr, self.port
        )
        try:
            self.api.call("POST", "/api/v1/nodes", obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._post_status()

    def _post_status(self) -> None:
        status = node_status(self.node_ip, self.gpus, self.version, self.port)
        path = f"/api/v1/nodes/{self.name}/status"
        self.api.call("PATCH", path, {"status": status}, "application/merge-patch+json")

    def _wait_pod_cidr(self, deadline: float) -> str:
        while True:
            node = self.api.get(f"/api/v1/nodes/{self.name}") or {}
            cidr = (node.get("spec") or {}).get("podCIDR")
            if cidr:
                return str(cidr)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"node {self.name} got no spec.podCIDR within 60 s: pass pod_cidr or run "
                    "kube-controller-manager with --allocate-node-cidrs --cluster-cidr"
                )
            time.sleep(0.2)  # the node-ipam controller's write; polled with a deadline

    def _renew_lease(self) -> None:
        """Merge-patch renewTime (a Lease update needs a resourceVersion; a patch does not)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        body = lease_object(self.name)
        try:
            self.api.call("PATCH", path, {"spec": body["spec"]}, "application/merge-patch+json")
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.api.call("POST", path.rsplit("/", 1)[0], body)

    def _heartbeat(self) -> None:
        beats = 0
        while not self._stopping.wait(HEARTBEAT):
            beats += 1
            try:
                self._renew_lease()
                if beats % STATUS_EVERY == 0:
                    self._post_status()
            except Exception:  # a missed beat is retried on the next one
                log.exception("kubelet %s: heartbeat failed", self.name)

    def _service_env(self) -> dict[str, str]:
        """What in-cluster config reads: the ``kubernetes`` Service's ClusterIP and port."""
        svc = self.api.get("/api/v1/namespaces/default/services/kubernetes") or {}
        spec = svc.get("spec") or {}
        host = str(spec.get("clusterIP") or "")
        port = str(((spec.get("ports") or [{}])[0]).get("port") or "")
        if not host or not port:  # no Service: the address this kubelet talks to
            url = urllib.parse.urlsplit(self.api.api.configuration.host)
            host, port = url.hostname or "", str(url.port or 443)
        return {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
        }

    # --- pods -------------------------------------------------------------------------------
    def _watch_pods(self) -> None:
        """List, then watch from the list's resourceVersion (an informer's loop): after a
        broken or expired watch the fresh list also reports pods deleted in between."""
        selector = f"spec.nodeName={self.name}"
        while not self._stopping.is_set():
            self._watch = watch.Watch()
            try:
                listed = self.api.call("GET", "/api/v1/pods", fieldSelector=selector)
                self.events.put(("LISTED", listed))
                for ev in self._watch.stream(
                    self.api.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=60,
                    deserialize=False,  # plain dicts: what PodRunner reads
                ):
                    if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.events.put((str(ev["type"]), dict(ev["object"])))
            except Exception:  # reconnect with a fresh list
                if not self._stopping.is_set():
                    log.exception("kubelet %s: pod watch failed; relisting", self.name)
                    self._stopping.wait(1.0)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self.events.get(timeout=0.5)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._on_pod(*item)
                self._reap()
            except Exception:  # one pod's error must not stop the node
                log.exception("kubelet %s: error handling %s", self.name, item and item[0])

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "LISTED":  # ``pod`` is the PodList
            items = pod.get("items") or []
            present = {p["metadata"]["uid"] for p in items}
            for uid, e in list(self.pods.items()):
                if uid not in present:
                    self._on_pod("DELETED", e.pod)
            for item in items:
                self._on_pod("MODIFIED", item)
            return
        meta = pod["metadata"]
        entry = self.pods.get(meta["uid"])
        if kind == "DELETED":
            if entry is not None:
                entry.deleted = True
                entry.runner.kill_now()
            return
        if kind not in ("ADDED", "MODIFIED"):
            return
        if entry is not None:
            entry.pod = pod
        if meta.get("deletionTimestamp"):
            if entry is None or not entry.runner.is_alive():  # nothing (left) to stop
                self.api.finalize_pod(meta["namespace"], meta["name"], meta["uid"])
            else:
                entry.runner.request_stop(float(meta.get("deletionGracePeriodSeconds") or 0))
            return
        if entry is None and (pod.get("status") or {}).get("phase") not in TERMINAL:
            self._run(pod)

    def _run(self, pod: dict[str, Any]) -> None:
        assert self.pool is not None
        meta = pod["metadata"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        net, netns_path, ip = None, None, self.node_ip
        if not pod["spec"].get("hostNetwork"):
            addr = self.pool.take()
            try:
                net = netns.create_pod_net(uid, addr, self.pool.gateway, router=self.router)
            except netns.NetworkError:
                self.pool.release(addr)
                raise
            netns_path, ip = net.path, net.ip
        gpu_env = {}
        need = pod_gpus(pod)
        if need:
            used = {d for devs in self.gpu_used.values() for d in devs}
            self.gpu_used[uid] = [i for i in range(self.gpus) if i not in used][:need]
            gpu_env["NVIDIA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpu_used[uid]))
        runner = ClusterPodRunner(
            pod,
            ip,
            self.cfg,
            write_status=lambda u, st: self._write_status(ns, name, u, st),
            finalize=lambda: self.api.finalize_pod(ns, name, uid),
            gpu_env=gpu_env,
            sandbox=PodSandbox(netns_path, PodSource(self.api, pod), self.mountpoints, *self.dns),
        )
        self.pods[uid] = PodEntry(pod, runner, net)
        runner.start()

    def _write_status(self, ns: str, name: str, uid: str, status: dict[str, Any]) -> None:
        """A rejected status write is logged, not raised: the pod's processes go on, and the
        next change writes the whole status again."""
        try:
            self.api.write_pod_status(ns, name, uid, status)
        except (ApiException, RuntimeError, OSError) as exc:
            log.warning("kubelet %s: status of pod %s/%s not written: %s", self.name, ns, name, exc)

    def _reap(self) -> None:
        """Free what ended pods hold: a finished pod's network and GPUs (its logs stay until
        it is deleted); everything of a deleted pod."""
        for uid, e in list(self.pods.items()):
            if e.runner.is_alive():
                continue
            if e.deleted:
                self._teardown(e)
                del self.pods[uid]
            elif e.runner.phase in TERMINAL and e.net is not None:
                self._release_net(e)

    def _release_net(self, e: PodEntry) -> None:
        if e.net is not None:
            netns.delete_pod_net(e.net)
            if self.pool is not None:
                self.pool.release(e.net.ip)
            e.net = None
        self.gpu_used.pop(e.runner.uid, None)

    def _teardown(self, e: PodEntry) -> None:
        self._release_net(e)
        shutil.rmtree(e.runner.dir, ignore_errors=True)

    # --- logs -------------------------------------------------------------------------------
    def _resolve_logs(
        self, ns: str, name: str, container: str, previous: bool
    ) -> tuple[ContainerLogs, str]:
        for e in list(self.pods.values()):
            meta = e.pod["metadata"]
            if meta["namespace"] == ns and meta["name"] == name and not e.deleted:
                return e.runner.logs, e.runner.log_file(container, previous)
        raise LogsUnavailable(404, f'pod "{ns}/{name}" not found on node {self.name}')


__all__ = ["GPU", "ProcessKubelet"]
