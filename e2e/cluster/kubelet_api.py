"""The kubelet API of the process kubelet: HTTPS on <node IP>:10250, as the API server expects
for ``kubectl logs`` (``/containerLogs/{namespace}/{pod}/{container}``) and ``/healthz``.

The serving certificate is made here for the node's IP, signed by ``ca`` when given (for an API
server started with ``--kubelet-certificate-authority``) or self-signed otherwise (the API
server does not verify kubelets without that flag). Client certificates are not checked: the
port is bound on the node's test address only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .kubelet_logs import ContainerLogs, LogQuery, LogQueryError


class LogsUnavailable(LookupError):
    """Maps to an HTTP status and the kubelet's message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# (namespace, pod, container, previous) -> (logs, path of the incarnation to read)
Resolver = Callable[[str, str, str, bool], tuple[ContainerLogs, str]]


def serving_cert(
    node_ip: str, name: str, directory: Path, ca: tuple[Path, Path] | None = None
) -> tuple[Path, Path]:
    """Write ``kubelet.crt``/``kubelet.key`` for ``node_ip`` into ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{name}")])
    issuer, signer = subject, key
    if ca is not None:
        ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
        ca_key = serialization.load_pem_private_key(ca[1].read_bytes(), None)
        issuer, signer = ca_cert.subject, ca_key  # type: ignore[assignment]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(node_ip)), x509.DNSName(name)]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(signer, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    crt, keyf = directory / "kubelet.crt", directory / "kubelet.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyf.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyf.chmod(0o600)
    return crt, keyf


class _Handler(BaseHTTPRequestHandler):
    server: KubeletApiServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # the API server logs every request already

    def _error(self, code: int, message: str) -> None:
        body = json.dumps(
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
        ).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._error(404, f"no handler for {url.path}")
            return
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        try:
            query = LogQuery.parse(q)
            logs, path = self.server.resolve(parts[1], parts[2], parts[3], query.previous)
        except LogQueryError as exc:
            self._error(400, str(exc))
            return
        except LogsUnavailable as exc:
            self._error(exc.code, str(exc))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        try:
            for chunk in logs.read(path, query):
                self.wfile.write(chunk)
                if query.follow:
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client (kubectl -f, through the API server) went away


class KubeletApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, cert: tuple[Path, Path], resolve: Resolver) -> None:
        super().__init__((host, port), _Handler)
        self.resolve = resolve
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        # The handshake happens in the request's thread, not in the accepting one.
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.serve_forever, name="kubelet-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)
