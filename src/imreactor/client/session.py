"""The client side of a msg_server connection, on the reactor (loop thread only)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ..pdu.imconn import CLIENT_SIDE, Dispatcher, ImConnection, Keepalive, LinkPolicy

PushCallback = Callable[[Any, int], Any]
"""``on_push(message, seq)``: a PDU the server sent on its own (a message, a kick, a notify)."""


def password_digest(password: str) -> str:
    """What TeamTalk clients send as the password: the lowercase hex MD5 of the plaintext."""
    return hashlib.md5(password.encode("utf-8")).hexdigest()


class ClientSession(ImConnection):
    """A client connection: requests by seq, everything else to ``on_push``.

    Heartbeats every 30 s and a 120 s receive timeout by default (``policy``).
    """

    def __init__(
        self,
        on_push: PushCallback,
        on_closed: Callable[[BaseException | None], Any] | None = None,
        on_connected: Callable[[], Any] | None = None,
        keepalive: Keepalive | None = None,
        policy: LinkPolicy = CLIENT_SIDE,
    ) -> None:
        dispatcher = Dispatcher(default=lambda conn, message, seq: on_push(message, seq))
        super().__init__(dispatcher, keepalive, policy)
        self._on_closed = on_closed
        self._on_connected = on_connected
        self.connected = False

    def on_connected(self) -> None:
        self.connected = True
        if self._on_connected is not None:
            self._on_connected()

    def on_closed(self, exc: BaseException | None) -> None:
        self.connected = False
        if self._on_closed is not None:
            self._on_closed(exc)
