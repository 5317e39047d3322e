"""The real control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Binaries come from e2e/cluster/build.py (one pinned release). The API server authenticates
client certificates (our test CA, pki.py) and service-account tokens it signs itself, authorizes
with Node+RBAC and runs the default admission plugins (PodSecurity included) plus
NodeRestriction. The controller manager runs the default controllers with one ServiceAccount
each (``--use-service-account-credentials``) and allocates every Node a podCIDR from
``cluster_cidr``. Every file lives under ``work_dir``.

Where the API server listens: on ``10.243.0.1:443`` (another slot's address when several
clusters share the host), the host end of the cluster's router uplink (apiaddr.py, router.py),
which it advertises as the ``kubernetes`` Service's endpoint: pods use the Service's ClusterIP
``10.96.0.1:443`` (``KUBERNETES_SERVICE_HOST``/``PORT``) through kube-proxy, the host's kubectl,
the controllers and the kubelets the address itself. The serving certificate names both.
etcd and the other components' ports stay on loopback. kube-proxy, CoreDNS and the default
StorageClass come with network.py.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd, free_port

from . import apiaddr, audit, build, pki
from .apiaddr import API_PORT
from .procs import Proc

ISSUER = "https://kubernetes.default.svc.cluster.local"
API_DNS = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
           "kubernetes.default.svc.cluster.local", "localhost")  # fmt: skip


class ControlPlaneError(RuntimeError):
    """A component did not start; the message carries the end of its log."""


@dataclass
class ControlPlane:
    work_dir: Path
    port: int = API_PORT
    # From the slot apiaddr.claim() hands out in start().
    slot: apiaddr.Slot | None = None
    etcd: EmbeddedEtcd | None = None
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def addresses(self) -> apiaddr.Slot:
        """The addresses of the slot start() claimed (apiaddr.py): the API server's, the
        service CIDR, the pod network."""
        assert self.slot is not None, "the control plane is not started"
        return self.slot

    @property
    def server(self) -> str:
        return f"https://{self.addresses.api_address}:{self.port}"

    @property
    def pki_dir(self) -> Path:
        return self.work_dir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.work_dir / "admin.kubeconfig"

    # --- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> ControlPlane:
        deadline = time.monotonic() + timeout
        try:
            self.slot = apiaddr.claim(deadline)
            self._pki()
            (self.work_dir / "etcd").mkdir(exist_ok=True)
            self.etcd = EmbeddedEtcd(data_dir=str(self.work_dir / "etcd")).start()
            self._start_apiserver()
            self._wait(lambda: self._get("/readyz") == "ok", deadline, "kube-apiserver /readyz")
            self._start_controller_manager()
            self._start_scheduler()
            for name in ("kube-controller-manager", "kube-scheduler"):
                port = self.procs[name].port
                self._wait(lambda p=port: _healthz(p), deadline, f"{name} /healthz")  # type: ignore[misc]
            # The ServiceAccount controller works (pods need their namespace's "default" SA).
            sa = "/api/v1/namespaces/default/serviceaccounts/default"
            self._wait(lambda: self._get(sa) is not None, deadline, "the default ServiceAccount")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every component (newest first) and etcd; the work dir stays (logs)."""
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.procs.clear()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        if self.slot is not None:
            apiaddr.release(self.slot.api_address)
            self.slot = None

    # --- PKI and kubeconfigs ------------------------------------------------------------
    def _pki(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.ca = pki.CA(self.pki_dir)
        self.sa_keys = pki.service_account_keys(self.pki_dir)
        ips = sorted({self.addresses.api_address, self.addresses.service_ip, "127.0.0.1"})
        self.serving = self.ca.issue("apiserver", "kube-apiserver", server=True, client=False,
                                     dns=API_DNS, ips=ips)  # fmt: skip
        # The aggregation layer's CA and client (kubeadm's front-proxy): requests the API server
        # proxies to extension API servers, and the requestheader CA every component reads.
        self.front_proxy_ca = pki.CA(self.pki_dir / "front-proxy", "front-proxy-ca")
        self.front_proxy = self.front_proxy_ca.issue("front-proxy-client", "front-proxy-client")
        self.kubelet_client = self.ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]
        )
        self.kubeconfig_for("admin", "kubernetes-admin", ["system:masters"],
                            path=self.admin_kubeconfig)  # fmt: skip

    def kubeconfig_for(
        self, name: str, user: str, groups: list[str], path: Path | None = None
    ) -> Path:
        """A kubeconfig authenticating as ``user`` in ``groups`` with a fresh client cert."""
        creds = self.ca.issue(name, user, groups)
        path = path or self.work_dir / f"{name}.kubeconfig"
        return pki.write_kubeconfig(path, self.server, self.ca.cert, creds, user)

    def node_kubeconfig(self, node: str) -> Path:
        """The kubelet identity the Node authorizer and NodeRestriction expect."""
        return self.kubeconfig_for(f"node-{node}", f"system:node:{node}", ["system:nodes"])

    # --- components ---------------------------------------------------------------------
    def _start_apiserver(self) -> None:
        assert self.etcd is not None
        p, addrs = self.pki_dir, self.addresses
        args = [
            f"--etcd-servers=http://{self.etcd.endpoint}",
            f"--bind-address={addrs.api_address}", f"--secure-port={self.port}",
            f"--advertise-address={addrs.api_address}",
            f"--tls-cert-file={self.serving.cert}", f"--tls-private-key-file={self.serving.key}",
            f"--client-ca-file={self.ca.cert}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={self.sa_keys.cert}",
            f"--service-account-signing-key-file={self.sa_keys.key}",
            f"--service-cluster-ip-range={addrs.service_cidr}",
            "--authorization-mode=Node,RBAC",
            # Added to the defaults (which include PodSecurity); kubeadm enables it too.
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={self.kubelet_client.cert}",
            f"--kubelet-client-key={self.kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--requestheader-client-ca-file={self.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.front_proxy.cert}",
            f"--proxy-client-key-file={self.front_proxy.key}",
            "--profiling=false",
            f"--cert-dir={p / 'apiserver-certs'}",
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]  # fmt: skip
        self._spawn("kube-apiserver", args, self.port)

    @property
    def audit_log(self) -> Path:
        """Every request the API server answered (e2e/cluster/audit.py reads it)."""
        return self.work_dir / "logs" / "audit.log"

    def _audit_policy(self) -> Path:
        path = self.work_dir / "audit-policy.yaml"
        path.write_text(audit.POLICY)
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _component_args(self, name: str, user: str) -> tuple[list[str], int]:
        kubeconfig = self.kubeconfig_for(name, user, [])
        port = free_port("127.0.0.1")
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.work_dir / name}",
            "--leader-elect=false", "--profiling=false",
        ], port  # fmt: skip

    def _start_controller_manager(self) -> None:
        name = "kube-controller-manager"
        args, port = self._component_args(name, f"system:{name}")
        args += [
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.sa_keys.key}",
            f"--root-ca-file={self.ca.cert}",
            f"--cluster-signing-cert-file={self.ca.cert}",
            f"--cluster-signing-key-file={self.pki_dir / 'ca.key'}",
            "--allocate-node-cidrs=true", f"--cluster-cidr={self.addresses.cluster_cidr}",
            "--node-cidr-mask-size=24", f"--service-cluster-ip-range={self.addresses.service_cidr}",
            # The default StorageClass's provisioner (network.py): a claim gets a directory
            # under /tmp/hostpath_pv that the process kubelet mounts into the pod.
            "--enable-hostpath-provisioner",
        ]  # fmt: skip
        self._spawn(name, args, port)

    def _start_scheduler(self) -> None:
        args, port = self._component_args("kube-scheduler", "system:kube-scheduler")
        self._spawn("kube-scheduler", args, port)

    def _spawn(self, name: str, args: list[str], port: int) -> None:
        log = self.work_dir / "logs" / f"{name}.log"
        self.procs[name] = Proc.spawn(name, [str(build.binary(name)), *args], log, port)

    # --- readiness ----------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        admin = self.pki_dir
        ctx.load_cert_chain(str(admin / "admin.crt"), str(admin / "admin.key"))
        return ctx

    def _get(self, path: str) -> str | None:
        """GET ``path`` as the admin; the body, or None on an error status or no connection."""
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl(), timeout=5) as r:
                return str(r.read().decode())
        except (OSError, urllib.error.URLError):
            return None

    def get_json(self, path: str) -> dict[str, Any] | None:
        body = self._get(path)
        return json.loads(body) if body is not None else None

    def _wait(self, ready: Any, deadline: float, what: str) -> None:
        wait_for_procs(self.procs, ready, deadline, what)


def _healthz(port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the component's self-signed serving certificate
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=5
        ) as r:
            return bool(r.read() == b"ok")
    except (OSError, urllib.error.URLError):
        return False


def wait_for_procs(procs: dict[str, Proc], ready: Any, deadline: float, what: str) -> None:
    """Until ``ready()``; fails at once, with its log, when one of ``procs`` exits."""
    while not ready():
        for proc in procs.values():
            if proc.exited():
                raise ControlPlaneError(f"{proc.name} exited: {proc.log_tail()}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}:\n{p.log_tail(1500)}" for p in procs.values())
            raise ControlPlaneError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.2)
