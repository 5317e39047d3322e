"""The e2e cluster's test PKI: one CA, serving and client certificates, kubeconfigs.

Identities follow Kubernetes' conventions so the API server's authenticators and authorizers
treat our components as they treat kubeadm's: the certificate's CN is the user name and its O
entries are the groups (``system:kube-controller-manager``, ``system:node:<name>`` in
``system:nodes`` for the Node authorizer, ``system:masters`` for the admin). ECDSA P-256 keys:
generated in microseconds, accepted everywhere Kubernetes takes RSA.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


class CA:
    """A self-signed CA under ``directory`` (ca.crt, ca.key) that issues leaf certificates."""

    def __init__(self, directory: Path, name: str = "rpcjob-e2e-ca") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = _write(self.dir / "ca.crt", self._cert.public_bytes(serialization.Encoding.PEM))
        _write(self.dir / "ca.key", _key_pem(self._key), private=True)

    def issue(
        self,
        name: str,
        common_name: str,
        groups: Sequence[str] = (),
        *,
        server: bool = False,
        client: bool = True,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> CertFiles:
        """Write ``<name>.crt``/``<name>.key`` for CN ``common_name`` with O=``groups``."""
        key = _key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return CertFiles(
            cert=_write(self.dir / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            key=_write(self.dir / f"{name}.key", _key_pem(key), private=True),
        )


def service_account_keys(directory: Path) -> CertFiles:
    """The key pair the API server signs service-account tokens with (sa.key) and verifies them
    with (sa.pub); ``cert`` is the public key file."""
    key = _key()
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CertFiles(
        cert=_write(directory / "sa.pub", pub),
        key=_write(directory / "sa.key", _key_pem(key), private=True),
    )


def write_kubeconfig(
    path: Path, server: str, ca: Path, creds: CertFiles, user: str, namespace: str = "default"
) -> Path:
    """A kubeconfig with one cluster/user/context, pointing at files (not embedded data)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "rpcjob-e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(creds.cert), "client-key": str(creds.key)},
            }
        ],
        "contexts": [
            {
                "name": "rpcjob-e2e",
                "context": {"cluster": "rpcjob-e2e", "user": user, "namespace": namespace},
            }
        ],
        "current-context": "rpcjob-e2e",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
