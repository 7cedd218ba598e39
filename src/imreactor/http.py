"""A small HTTP/1.1 server protocol on the reactor, with httptools doing the parsing.

For the handful of plain endpoints the IM servers expose (login_server's
``/msg_server``, ``/healthz``, ``/readyz``, ``/metrics``): a route table of path prefix →
handler, each returning ``(status, content_type, body)``. Requests are served
in order; keep-alive is honoured; a request the parser rejects (an upgrade
too), or one larger than ``MAX_REQUEST_BYTES``, gets ``400`` and the
connection is closed, and nothing pipelined behind it is served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

import httptools

from .net.transport import Protocol, Transport

log = logging.getLogger(__name__)

#: Headers and body of one request, at most. The endpoints served here take no body.
MAX_REQUEST_BYTES = 64 * 1024
#: Input goes to the parser at most this many bytes at a time, so that the size limit
#: counts each request's own bytes (exactly for the first request of a connection, to
#: within this much for later ones) even when one read ends one request and starts the
#: next, or holds many small pipelined requests.
FEED_BYTES = 4 * 1024

#: Content types of the answers the servers give.
JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"

Response = tuple[int, str, bytes]
Route = Callable[["Request"], Response]


class Request:
    """What a route handler sees: method, path, query string and headers."""

    __slots__ = ("headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers


class Router:
    """Path prefix → handler; the longest matching prefix wins; else 404."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, Route]] = []

    def add(self, prefix: str, handler: Route) -> None:
        self._routes.append((prefix, handler))
        self._routes.sort(key=lambda r: -len(r[0]))

    def dispatch(self, request: Request) -> Response:
        for prefix, handler in self._routes:
            if request.path.startswith(prefix):
                return handler(request)
        return 404, "text/plain; charset=utf-8", b"not found\n"


class HttpProtocol(Protocol):
    """One HTTP connection. Loop thread only."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.conn: Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_name = b""
        self._received = 0
        self._closing = False  # answered with "Connection: close" or 400: serve no more

    def connection_made(self, conn: Transport) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), FEED_BYTES):
            if self._closing:
                return
            piece = view[start : start + FEED_BYTES]
            self._received += len(piece)  # reset when a request completes
            if self._received > MAX_REQUEST_BYTES:
                self._bad_request("request too large")
                return
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._bad_request("protocol upgrade not supported")
                return
            except httptools.HttpParserError as exc:
                self._bad_request(f"malformed request: {exc}")
                return

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) < 100:
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_message_complete(self) -> None:
        assert self.conn is not None
        if self._closing:
            return  # pipelined in the same piece behind a request that closed the connection
        if self._parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next, which answers 400
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._bad_request(f"invalid URL {self._url[:100]!r}")
            return
        path = url.path.decode("latin-1") if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        method = self._parser.get_method().decode("latin-1")
        request = Request(method, path, query, self._headers)
        try:
            status, ctype, body = self.router.dispatch(request)
        except Exception:
            log.exception("HTTP handler for %s failed", path)
            status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        keep_alive = self._parser.should_keep_alive()
        self._respond(status, ctype, body, keep_alive)
        self._url = b""
        self._headers = {}
        self._received = 0
        if not keep_alive:
            self._closing = True
            self.conn.close()

    def _respond(self, status: int, ctype: str, body: bytes, keep_alive: bool) -> None:
        assert self.conn is not None
        reason = HTTPStatus(status).phrase
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        self.conn.write(head.encode("latin-1") + body)

    def _bad_request(self, reason: str) -> None:
        assert self.conn is not None
        if self._closing:
            return
        self._closing = True
        log.warning("%r: %s; answering 400 and closing", self.conn, reason)
        self._respond(400, "text/plain; charset=utf-8", b"bad request\n", False)
        self.conn.close()
