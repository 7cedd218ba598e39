"""The password as the wire protocol carries it (``IMLoginReq.password``)."""

from __future__ import annotations

import hashlib


def password_digest(password: str) -> str:
    """What TeamTalk clients send as the password: the lowercase hex MD5 of the plaintext.

    A fact of the protocol, not a security measure: servers store a real hash of
    this digest (see :mod:`imreactor.storage.passwords`), never of the plaintext.
    """
    return hashlib.md5(password.encode("utf-8")).hexdigest()
