"""A small HTTP/1.1 server protocol on the reactor, with httptools doing the parsing.

For the plain endpoints the IM servers expose (login_server's ``/msg_server``,
``/healthz``, ``/readyz``, ``/metrics``) and msfs's uploads and downloads: a route
table of path prefix → handler. A handler returns ``(status, content_type, body)``,
a :class:`Reply` (the same with extra headers), or a :class:`Pending` that it
completes later (from work done off the loop thread, brought back onto it).

Requests are served in order; keep-alive is honoured; while an answer is pending
no further input is parsed (reading is paused), so answers go out in request order
and a pipelining client cannot queue work without bound. A request the parser
rejects (an upgrade too), or one larger than ``MAX_REQUEST_BYTES``, gets ``400``
and the connection is closed, and nothing pipelined behind it is served.

A server that drains calls :meth:`HttpConnections.finish`: each connection answers
the request it is receiving or has received, with ``Connection: close``, and closes;
an idle one closes at once.

A route takes a body only if it is added with ``max_body_bytes``: its requests may
carry that much beyond ``MAX_REQUEST_BYTES`` of head, and the body is handed to
the handler in :attr:`Request.body`. The size is checked when the head is complete,
before any of the body is kept: a ``Content-Length`` above the limit is answered
at once (by the route's ``too_large`` handler, else ``413``) and the connection is
closed without reading the body; a chunked body is counted as it arrives and
refused the same way the moment it passes the limit.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

from .net.transport import Protocol, Transport

log = logging.getLogger(__name__)

#: Head (and body, for routes that take none) of one request, at most.
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


@dataclass
class Reply:
    """A response with headers beyond Content-Type, Content-Length and Connection."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Pending:
    """An answer the handler gives later: it calls :meth:`complete` once, on the loop thread.

    Until then the connection parses no further requests. Completing after the
    connection closed is harmless (the answer is dropped).
    """

    __slots__ = ("_done", "_on_done")

    def __init__(self) -> None:
        self._on_done: Callable[[Response | Reply], None] | None = None
        self._done: Response | Reply | None = None

    def complete(self, answer: Response | Reply) -> None:
        if self._done is not None:
            raise RuntimeError("Pending completed twice")
        self._done = answer
        if self._on_done is not None:
            self._on_done(answer)

    def then(self, on_done: Callable[[Response | Reply], None]) -> None:
        """For the protocol: call ``on_done`` with the answer (now, if it is already there)."""
        self._on_done = on_done
        if self._done is not None:
            on_done(self._done)


Answer = Response | Reply | Pending


class Request:
    """What a route handler sees: method, path, query string, headers and (for routes
    that take one) the body."""

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes = b""
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body


Route = Callable[[Request], Answer]


@dataclass
class RouteEntry:
    """One route: its handler and what body it accepts (``max_body_bytes`` 0: none)."""

    prefix: str
    handler: Route
    max_body_bytes: int = 0
    too_large: Callable[[Request], Response | Reply] | None = None


def _not_found(request: Request) -> Answer:
    return 404, "text/plain; charset=utf-8", b"not found\n"


_NOT_FOUND = RouteEntry("", _not_found)


class Router:
    """Path prefix → handler; the longest matching prefix wins; else 404."""

    def __init__(self) -> None:
        self._routes: list[RouteEntry] = []

    def add(
        self,
        prefix: str,
        handler: Route,
        *,
        max_body_bytes: int = 0,
        too_large: Callable[[Request], Response | Reply] | None = None,
    ) -> None:
        """Route paths starting with ``prefix`` to ``handler``.

        ``max_body_bytes``: the largest body its requests may carry (0: none beyond
        what fits in ``MAX_REQUEST_BYTES`` with the head, and it is not kept);
        ``too_large(request)`` answers a request whose body is larger (default 413).
        """
        self._routes.append(RouteEntry(prefix, handler, max_body_bytes, too_large))
        self._routes.sort(key=lambda r: -len(r.prefix))

    def route(self, path: str) -> RouteEntry:
        for entry in self._routes:
            if path.startswith(entry.prefix):
                return entry
        return _NOT_FOUND

    def dispatch(self, request: Request) -> Answer:
        return self.route(request.path).handler(request)


class _Slot:
    """One request's place in the answer order."""

    __slots__ = ("answer", "head_only", "keep_alive")

    def __init__(self, keep_alive: bool, head_only: bool) -> None:
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.answer: Response | Reply | None = None


class HttpProtocol(Protocol):
    """One HTTP connection. Loop thread only."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.conn: Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._received = 0
        self._limit = MAX_REQUEST_BYTES  # for the request being parsed
        self._route: RouteEntry | None = None  # known once its head is complete
        self._path = "/"
        self._query = ""
        self._body: bytearray | None = None  # kept only for routes that take a body
        self._closing = False  # answered with "Connection: close" or 400: serve no more
        self._finishing = False  # finish(): the request in progress is the last
        self._lost = False
        self._slots: deque[_Slot] = deque()
        self._held = b""  # input not parsed yet because an answer is pending

    def connection_made(self, conn: Transport) -> None:
        self.conn = conn

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True

    @property
    def lost(self) -> bool:
        """True once the connection has closed."""
        return self._lost

    def finish(self) -> None:
        """Answer the request in progress (being received, or waiting for its answer) with
        ``Connection: close`` and close; close at once if there is none. Idempotent."""
        self._finishing = True
        if self.conn is not None and not self._slots and self._received == 0:
            self._closing = True
            self.conn.close()

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        view = memoryview(data)
        for start in range(0, len(view), FEED_BYTES):
            if self._closing:
                return
            if self._slots:  # an answer is pending: parse the rest once it is out
                self._held = bytes(view[start:])
                self.conn.pause_reading()
                return
            piece = view[start : start + FEED_BYTES]
            self._received += len(piece)  # reset when a request completes
            if self._received > self._limit:
                self._refuse_size()
                return
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._bad_request("protocol upgrade not supported")
                return
            except httptools.HttpParserError as exc:
                if not self._closing:
                    self._bad_request(f"malformed request: {exc}")
                return

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) < 100:
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._closing:
            return
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            return  # on_message_complete answers 400
        self._path = url.path.decode("latin-1") if url.path else "/"
        self._query = url.query.decode("latin-1") if url.query else ""
        route = self._route = self.router.route(self._path)
        if not route.max_body_bytes:
            return
        self._limit = MAX_REQUEST_BYTES + route.max_body_bytes
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > route.max_body_bytes:
            self._too_large()
            raise httptools.HttpParserError("body too large")  # stop parsing this input
        self._body = bytearray()

    def on_body(self, body: bytes) -> None:
        if self._body is None or self._closing:
            return  # a route that takes no body: counted against MAX_REQUEST_BYTES, dropped
        assert self._route is not None
        if len(self._body) + len(body) > self._route.max_body_bytes:
            self._too_large()
            raise httptools.HttpParserError("body too large")
        self._body += body

    def on_message_complete(self) -> None:
        assert self.conn is not None
        if self._closing:
            return  # pipelined in the same piece behind a request that closed the connection
        if self._parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next, which answers 400
        route = self._route
        if route is None:
            self._bad_request(f"invalid URL {self._url[:100]!r}")
            return
        method = self._parser.get_method().decode("latin-1")
        body = bytes(self._body) if self._body is not None else b""
        request = Request(method, self._path, self._query, self._headers, body)
        slot = _Slot(self._parser.should_keep_alive(), method == "HEAD")
        self._slots.append(slot)
        self._url, self._headers, self._body, self._route = b"", {}, None, None
        self._received, self._limit = 0, MAX_REQUEST_BYTES
        try:
            answer = route.handler(request)
        except Exception:
            log.exception("HTTP handler for %s failed", request.path)
            answer = 500, "text/plain; charset=utf-8", b"internal error\n"
        if isinstance(answer, Pending):
            answer.then(lambda done: self._answered(slot, done))
        else:
            self._answered(slot, answer)

    def _answered(self, slot: _Slot, answer: Response | Reply) -> None:
        """Fill ``slot``; write every answer that is now first in line."""
        slot.answer = answer
        if self._lost:
            return
        while self._slots and self._slots[0].answer is not None:
            done = self._slots.popleft()
            assert done.answer is not None
            reply = done.answer if isinstance(done.answer, Reply) else Reply(*done.answer)
            keep_alive = done.keep_alive and not (self._finishing and not self._slots)
            self._respond(reply, keep_alive, done.head_only)
            if not keep_alive:
                self._closing = True
                assert self.conn is not None
                self.conn.close()
                return
        if not self._slots and self._held:
            held, self._held = self._held, b""
            assert self.conn is not None
            self.conn.resume_reading()
            self.data_received(held)

    def _respond(self, reply: Reply, keep_alive: bool, head_only: bool = False) -> None:
        assert self.conn is not None
        reason = HTTPStatus(reply.status).phrase
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        head = (
            f"HTTP/1.1 {reply.status} {reason}\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n"
            f"{extra}"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode("latin-1")
        self.conn.writelines([head] if head_only else [head, reply.body])

    def _refuse_size(self) -> None:
        if self._route is not None and self._route.max_body_bytes:
            self._too_large()
        else:
            self._bad_request("request too large")

    def _too_large(self) -> None:
        """Answer a body over its route's limit (after any answers still owed) and close."""
        assert self.conn is not None and self._route is not None
        if self._closing:
            return
        request = Request(
            self._parser.get_method().decode("latin-1"), self._path, self._query, self._headers
        )
        log.warning(
            "%r: body for %s over %d bytes; refused",
            self.conn,
            self._path,
            self._route.max_body_bytes,
        )
        too_large = self._route.too_large
        answer: Response | Reply = (
            too_large(request)
            if too_large is not None
            else (413, "text/plain; charset=utf-8", b"request body too large\n")
        )
        self._last_answer(answer)

    def _bad_request(self, reason: str) -> None:
        """Answer 400 (after any answers still owed, in order) and close."""
        assert self.conn is not None
        if self._closing:
            return
        log.warning("%r: %s; answering 400 and closing", self.conn, reason)
        self._last_answer((400, "text/plain; charset=utf-8", b"bad request\n"))

    def _last_answer(self, answer: Response | Reply) -> None:
        slot = _Slot(False, False)
        self._slots.append(slot)
        self._answered(slot, answer)
        self._closing = True  # serve nothing behind it, even before the slot is written


class HttpConnections:
    """The protocol factory of one HTTP listener, which remembers its live connections
    (weakly: a closed one is forgotten) so that a draining server can finish them."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._live: weakref.WeakSet[HttpProtocol] = weakref.WeakSet()

    def __call__(self) -> HttpProtocol:
        protocol = HttpProtocol(self.router)
        self._live.add(protocol)
        return protocol

    @property
    def open(self) -> int:
        """Connections not closed yet."""
        return sum(1 for protocol in list(self._live) if not protocol.lost)

    def finish(self) -> None:
        """:meth:`HttpProtocol.finish` every live connection."""
        for protocol in list(self._live):
            if not protocol.lost:
                protocol.finish()
