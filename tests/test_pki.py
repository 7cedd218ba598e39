"""The private CA: files, permissions, names, and refusals."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from imreactor import pki


def test_ca_and_certificate_files(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "ca")
    cert = pki.issue(ca, tmp_path / "certs", "msg", hosts=["chat.example", "127.0.0.1"])
    for key in (ca.key, cert.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600  # never readable by others
    issued = x509.load_pem_x509_certificate(cert.cert.read_bytes())
    sans = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["chat.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    root = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    assert issued.issuer == root.subject
    issued.verify_directly_issued_by(root)
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca


def test_a_certificate_needs_a_name(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path)
    with pytest.raises(ValueError, match="at least one host name"):
        pki.issue(ca, tmp_path, "nameless", hosts=[])


def test_an_unreadable_ca_key_is_refused(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path)
    ca.key.write_text("not a key")
    with pytest.raises(ValueError):
        pki.issue(ca, tmp_path, "x", hosts=["x"])
