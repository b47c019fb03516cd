"""The cluster's TLS: its own certificate authority, a server certificate it signs, and a CA bundle.

Clients verify the cluster as they verify a real Arvados: the SDK, Keep and websocket clients
trust ``SSL_CERT_FILE`` (``arvados.util.ca_certs_path``), which ``cluster env`` points at the
bundle (the host's trusted CAs plus this cluster's), so nobody needs ``ARVADOS_API_HOST_INSECURE``.
Containers with API access get the same bundle at ``/etc/arvados/ca-certificates.crt``, where
crunch-run bind-mounts the dispatcher's ``SSL_CERT_FILE`` (``crunchrun.go``, ``arvadosCertPath``).
The CA's private key is never written: it signs the server certificate once and is dropped.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

#: Where crunch-run presents the CA bundle inside a container with API access.
CONTAINER_CA_PATH = "/etc/arvados/ca-certificates.crt"
#: The host's trusted CAs, first found (the list crunch-run takes from Go's ``root_linux.go``).
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                  "/etc/ssl/ca-bundle.pem", "/etc/pki/tls/cacert.pem",
                  "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "/etc/ssl/cert.pem")
_VALID = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class Certificates:
    """The files of a cluster's TLS, under its state dir's ``tls/``."""

    cert: Path  #: the server certificate (API, Keep, websocket)
    key: Path  #: its private key (mode 0600)
    ca: Path  #: the cluster's CA certificate alone
    bundle: Path  #: the host's trusted CAs plus the cluster's: what clients trust

    @classmethod
    def of(cls, state_path: Path) -> "Certificates":
        """The files of the cluster whose state dir is ``state_path``."""
        directory = state_path / "tls"
        return cls(directory / "cert.pem", directory / "key.pem", directory / "ca.pem",
                   directory / "ca-certificates.crt")

    def complete(self) -> bool:
        return all(p.exists() for p in (self.cert, self.key, self.ca, self.bundle))


def bundle_path(state_path: Path) -> Path:
    """The CA bundle clients of the cluster in ``state_path`` trust."""
    return Certificates.of(state_path).bundle


def ensure_certificates(state_path: Path, host: str) -> Certificates:
    """Make (once) the CA, a server certificate for ``host`` and the bundle; later starts reuse
    them, so clients that trust the bundle keep trusting the cluster across restarts."""
    files = Certificates.of(state_path)
    if files.complete():
        return files
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = _issue(host)
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    files.cert.write_bytes(cert_pem)
    files.ca.write_bytes(ca_pem)
    files.bundle.write_bytes(_system_bundle() + ca_pem)
    return files


def _system_bundle() -> bytes:
    for path in SYSTEM_BUNDLES:
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        return data if data.endswith(b"\n") else data + b"\n"
    return b""


def _issue(host: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key), PEM; the CA key only lives here."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    # A name of its own per cluster: two local clusters' CAs are never mistaken for each other.
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"toil-arvados local cluster CA {secrets.token_hex(4)}")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (_builder(ca_name, ca_name, ca_key.public_key(), now)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    server = (_builder(server_name, ca_name, key.public_key(), now)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.SubjectAlternativeName(_alt_names(host)), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), server.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _builder(subject, issuer, public_key, now):
    from cryptography import x509

    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + _VALID))


def _alt_names(host: str) -> list:
    """The names clients use: ``host`` (as an IP address when it is one), localhost, 127.0.0.1."""
    from cryptography import x509

    names: list = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        address = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        address = x509.DNSName(host)
    return names if address in names else [*names, address]


def server_context(files: Certificates) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def client_context(state_path: Path) -> ssl.SSLContext:
    """A context that verifies the cluster in ``state_path`` by its CA (hostname included)."""
    return ssl.create_default_context(cafile=str(Certificates.of(state_path).ca))
