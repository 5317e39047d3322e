"""TLS material for the etcd test fixtures: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and a second, unrelated CA with its own client certificate
(for "bad certificate" tests). EC P-256 keys: generation takes milliseconds. And
:class:`EtcdServer`: the embedded etcd serving that TLS and with authentication turned on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster.pki import CA
from rpcjob.etcd import Client
from rpcjob.etcd._convert import prefix_end
from rpcjob.etcd._pb import auth_pb2 as authpb
from rpcjob.etcd._pb import rpc_pb2 as pb
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd


@dataclass(frozen=True)
class TLSMaterial:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # an unrelated CA: a client trusting it rejects the server
    other_client_cert: str  # signed by other_ca: the server rejects it
    other_client_key: str

    @property
    def client(self) -> tuple[str, str]:
        return (self.client_cert, self.client_key)


def make_tls(folder: Path) -> TLSMaterial:
    """Write the CA, server, client and 'other' certificates (PEM) into ``folder``."""
    ca, other = CA(folder / "ca", "rpcjob test CA"), CA(folder / "other", "unrelated CA")
    server = ca.issue("server", "rpcjob-etcd", server=True, dns=["localhost"], ips=["127.0.0.1"])
    client = ca.issue("client", "rpcjob-client")
    stranger = other.issue("other-client", "rpcjob-client")
    return TLSMaterial(
        ca=str(ca.cert),
        server_cert=str(server.cert),
        server_key=str(server.key),
        client_cert=str(client.cert),
        client_key=str(client.key),
        other_ca=str(other.cert),
        other_client_cert=str(stranger.cert),
        other_client_key=str(stranger.key),
    )


@dataclass
class TLSFiles:
    """Server-side TLS material (PEM file paths)."""

    ca: str
    cert: str
    key: str
    client_cert_auth: bool = False


@dataclass
class EtcdServer(EmbeddedEtcd):
    """The embedded etcd of the tests: optionally serving TLS, with auth once enable_auth()."""

    tls: TLSFiles | None = None
    # Set by enable_auth(): how clients authenticate (user, password); never logged.
    auth: tuple[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.tls:
            self.extra_args += ["--cert-file", self.tls.cert, "--key-file", self.tls.key]
            self.extra_args += ["--trusted-ca-file", self.tls.ca]
            if self.tls.client_cert_auth:
                self.extra_args += ["--client-cert-auth"]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def _healthy(self) -> bool:
        return self.tls is not None or super()._healthy()  # TLS clients retry until served

    def client_kwargs(self, client_tls: tuple[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``rpcjob.etcd.Client`` (CA, the client certificate and key
        given as ``client_tls``, user/password once auth is enabled)."""
        kw: dict[str, Any] = {}
        if self.tls:
            kw["ca"] = self.tls.ca
        if client_tls:
            kw["cert"], kw["key"] = client_tls
        if self.auth:
            kw["user"], kw["password"] = self.auth
        return kw

    def enable_auth(
        self,
        root_password: str,
        *,
        users: Sequence[tuple[str, str, str]] = (),
        client_tls: tuple[str, str] | None = None,
    ) -> None:
        """Turn on etcd authentication: user ``root`` (role root) with ``root_password``, plus
        ``users`` as (name, password, key prefix) with read-write access to their prefix.
        Clients then need ``user``/``password`` (see client_kwargs)."""
        with Client(self.endpoint, **self.client_kwargs(client_tls)) as c:
            c.auth_call("UserAdd", pb.AuthUserAddRequest(name="root", password=root_password))
            c.auth_call("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))
            for name, password, prefix in users:
                perm = authpb.Permission(
                    permType=authpb.Permission.READWRITE,
                    key=prefix.encode(),
                    range_end=prefix_end(prefix.encode()),
                )
                c.auth_call("RoleAdd", pb.AuthRoleAddRequest(name=name))
                c.auth_call(
                    "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name=name, perm=perm)
                )
                c.auth_call("UserAdd", pb.AuthUserAddRequest(name=name, password=password))
                c.auth_call("UserGrantRole", pb.AuthUserGrantRoleRequest(user=name, role=name))
            c.auth_call("AuthEnable", pb.AuthEnableRequest())
        self.auth = ("root", root_password)
