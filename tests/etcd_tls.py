"""TLS material for the etcd test fixtures: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and a second, unrelated CA with its own client certificate
(for "bad certificate" tests). EC P-256 keys: generation takes milliseconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.pki import CA


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
