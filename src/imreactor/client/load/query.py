"""login_server's ``GET /msg_server``, asked without blocking the loop.

:class:`MsgServerQuery` is the protocol of one such request on its own connection:
``done(answer, error)`` runs exactly once, with the decoded JSON object or with None and
why not; reading the answer (:func:`~imreactor.client.locate.msg_server_address`) is the
caller's.
"""

from __future__ import annotations

import json
from typing import Any

import httptools

from ...net import Protocol, Transport


class MsgServerQuery(Protocol):
    """``GET /msg_server`` on login_server; ``done(answer, error)`` runs exactly once.

    ``answer`` is the decoded JSON object, or None with ``error`` saying why.
    """

    def __init__(self, host: str, path: str, done: Any) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            "User-Agent: imreactor-load\r\n\r\n"
        ).encode("latin-1")
        self._parser = httptools.HttpResponseParser(self)
        self._body = bytearray()
        self._done = done
        self._finished = False
        self._answer: tuple[dict[str, Any] | None, str] | None = None
        self.conn: Transport | None = None

    def connection_made(self, conn: Transport) -> None:
        self.conn = conn
        conn.write(self._request)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(None, f"bad HTTP answer: {exc}")
            return
        # Finished here, not inside the parser's callback: an exception in ``done``
        # must not be taken for a parse error.
        if self._answer is not None:
            self._finish(*self._answer)

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status != 200:
            self._answer = (None, f"HTTP {status}")
            return
        try:
            answer = json.loads(self._body)
        except ValueError as exc:
            self._answer = (None, f"answer is not JSON: {exc}")
            return
        if not isinstance(answer, dict):
            self._answer = (None, "answer is not a JSON object")
            return
        self._answer = (answer, "")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._finish(None, f"connection closed before the answer ({exc or 'EOF'})")

    def connection_failed(self, exc: BaseException) -> None:
        self._finish(None, f"cannot connect: {exc}")

    def _finish(self, answer: dict[str, Any] | None, error: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self.conn is not None:
            self.conn.close()
        self._done(answer, error)
