"""The password digest the wire protocol carries."""

from __future__ import annotations

from imreactor.pdu.password import password_digest


def test_the_digest_is_the_lowercase_hex_md5_of_the_utf8_plaintext() -> None:
    assert password_digest("") == "d41d8cd98f00b204e9800998ecf8427e"
    assert password_digest("ä") == "8419b71c87a225a2c70b50486fbee545"
