"""Certificates for the TLS tests: a private CA and localhost certificates, made once per run."""

from __future__ import annotations

import functools
import pathlib
import ssl
import tempfile

from imreactor import pki
from imreactor.net.tls import client_context, server_context

_DIR = tempfile.TemporaryDirectory(prefix="imreactor-tls-")  # removed at exit


def directory() -> pathlib.Path:
    """Where this run's certificates are."""
    return pathlib.Path(_DIR.name)


@functools.cache
def ca() -> pki.CertFiles:
    """The test CA."""
    return pki.create_ca(directory() / "ca")


@functools.cache
def foreign_ca() -> pki.CertFiles:
    """A second CA that nobody trusts."""
    return pki.create_ca(directory() / "foreign", "a CA nobody trusts")


@functools.cache
def localhost() -> pki.CertFiles:
    """A certificate for localhost and 127.0.0.1, from :func:`ca`."""
    return pki.issue(ca(), directory(), "localhost", hosts=["localhost", "127.0.0.1"])


def server_ctx(
    cert: pki.CertFiles | None = None, client_ca: pki.CertFiles | None = None
) -> ssl.SSLContext:
    """A server context with ``cert`` (default :func:`localhost`)."""
    cert = cert or localhost()
    return server_context(
        str(cert.cert), str(cert.key), client_ca_file=str(client_ca.cert) if client_ca else None
    )


def client_ctx(cert: pki.CertFiles | None = None) -> ssl.SSLContext:
    """A client context that trusts :func:`ca` (presenting ``cert`` if given)."""
    return client_context(
        str(ca().cert),
        cert_file=str(cert.cert) if cert else None,
        key_file=str(cert.key) if cert else None,
    )
