"""A private certificate authority: the CA and certificates a suite needs for TLS.

``imreactor up --tls`` and the cluster commands make a CA in the data dir and
issue certificates from it: one for what clients connect to (with the host
names and addresses they use), one per server for the mutually authenticated
links between servers. Keys are written readable by their owner only
(``0600``). Built on ``cryptography``; EC P-256 keys, SHA-256 signatures.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Validity of a new CA and of the certificates it issues.
CA_DAYS = 3650
CERT_DAYS = 825


@dataclass(frozen=True)
class CertFiles:
    """Where one certificate and its key are (PEM)."""

    cert: Path
    key: Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` (a key) to ``path``, created ``0600``: never readable by others, not
    even briefly; a new parent directory is ``0700``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imreactor"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(
    directory: Path, common_name: str = "imreactor local CA", *, stem: str = "ca"
) -> CertFiles:
    """Make a new CA in ``directory`` (``<stem>.pem``, ``<stem>.key``); returns its files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(directory / f"{stem}.pem", directory / f"{stem}.key")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(files.key, _key_pem(key))
    return files


def issue(
    ca: CertFiles,
    directory: Path,
    name: str,
    *,
    hosts: list[str],
    days: int = CERT_DAYS,
    not_before: datetime.datetime | None = None,
) -> CertFiles:
    """Issue ``<name>.pem`` / ``<name>.key`` in ``directory``, signed by ``ca``.

    ``hosts`` are the DNS names and IP addresses the certificate is valid for
    (its subject alternative names); the first is also its common name. The
    certificate serves both as a server and as a client certificate, so one
    file identifies a server on both ends of a link. ``days`` and
    ``not_before`` exist for tests of expired certificates.
    """
    if not hosts:
        raise ValueError("a certificate needs at least one host name or address")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key}: not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    start = not_before if not_before is not None else _now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(files.key, _key_pem(key))
    return files


def link_files(directory: Path) -> tuple[CertFiles, CertFiles]:
    """The cluster CA and this machine's link certificate in ``directory``, made if absent.

    Returns ``(ca, link)``. The link certificate identifies the servers of this
    machine to each other (and to the servers of machines that trust the same CA).
    """
    ca = CertFiles(directory / "ca.pem", directory / "ca.key")
    link = CertFiles(directory / "link.pem", directory / "link.key")
    if ca.cert.exists() and link.cert.exists() and link.key.exists():
        return ca, link  # ca.key may be absent: a machine that joined has none
    if not (ca.cert.exists() and ca.key.exists()):
        ca = create_ca(directory, "imreactor cluster CA")
    return ca, issue(ca, directory, "link", hosts=["imreactor-link"])


def public_files(directory: Path, hosts: list[str]) -> tuple[CertFiles, CertFiles]:
    """A CA for what clients see and a server certificate for ``hosts``, made if absent.

    Returns ``(ca, server)``: give ``ca.cert`` to clients (``--ca``). Kept apart
    from the cluster CA of :func:`link_files`, so that trusting a server is never
    the same as being able to join the cluster. A certificate whose names are not
    ``hosts`` any more (the suite moved to another address) is issued again.
    """
    ca = CertFiles(directory / "clients-ca.pem", directory / "clients-ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        ca = create_ca(directory, "imreactor clients CA", stem="clients-ca")
    server = CertFiles(directory / "server.pem", directory / "server.key")
    if not (server.cert.exists() and server.key.exists()) or _names(server.cert) != set(hosts):
        server = issue(ca, directory, "server", hosts=hosts)
    return ca, server


def _names(cert_file: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in sans}
