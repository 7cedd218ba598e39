"""The HTTP server protocol (imreactor.http): parsing, keep-alive, routes and refusals.

Most tests run an :class:`HttpProtocol` server on a real loop in its own thread and
talk to it over loopback sockets. Those that depend on how the input is split into
reads (several pipelined requests in one read, a request split across reads) run
the protocol over an in-memory transport, where the split is chosen by the test
instead of by the kernel.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from imreactor.http import MAX_REQUEST_BYTES, HttpProtocol, Pending, Request, Response, Router
from imreactor.http import Reply as HttpReply
from imreactor.net import EventLoop, Protocol, Transport
from imreactor.net.connection import DEFAULT_FLOW
from imreactor.net.testing import transport_pair

#: Upper bound for anything a test waits for: a broken server fails the test, never hangs it.
DEADLINE_S = 10.0
TEXT = "text/plain; charset=utf-8"


# -- what the server runs ------------------------------------------------------------------


class Routes:
    """Handlers that record every request they serve and answer with what they saw."""

    def __init__(self) -> None:
        self.seen: list[Request] = []

    def echo(self, request: Request) -> Response:
        self.seen.append(request)
        return 200, TEXT, f"{request.method} {request.path}?{request.query}".encode()

    def named(self, name: str) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            self.seen.append(request)
            return 200, TEXT, f"{name}:{request.path}".encode()

        return handler

    def broken(self, request: Request) -> Response:
        self.seen.append(request)
        raise ValueError("the handler broke")

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.seen]


def standard_router(routes: Routes) -> Router:
    router = Router()
    router.add("/echo", routes.echo)
    router.add("/broken", routes.broken)
    return router


class LoopThread:
    """An HttpProtocol server on a real EventLoop run by its own thread."""

    def __init__(self, router: Router) -> None:
        self.loop = EventLoop()
        self.router = router
        self.protocols: list[HttpProtocol] = []
        self.server = self.loop.listen("127.0.0.1", 0, self._make)
        self.port = self.server.port
        self.thread = threading.Thread(target=self.loop.run, name="http-loop", daemon=True)
        self.thread.start()

    def _make(self) -> HttpProtocol:
        protocol = HttpProtocol(self.router)
        self.protocols.append(protocol)
        return protocol

    def close(self) -> None:
        def shut_down() -> None:
            self.server.close()
            for protocol in self.protocols:
                if protocol.conn is not None:
                    protocol.conn.abort()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shut_down)
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive(), "the server loop did not stop"
        self.loop.close()


@pytest.fixture
def routes() -> Routes:
    return Routes()


@pytest.fixture
def server(routes: Routes) -> Iterator[LoopThread]:
    running = LoopThread(standard_router(routes))
    try:
        yield running
    finally:
        running.close()


# -- the client side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ", 2)[1])


def take_reply(buf: bytearray) -> Reply | None:
    """Remove one whole response from the front of ``buf``; None if it is not all there."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        assert sep, f"not a header line: {line!r}"
        assert name.lower() not in headers, f"header {name!r} twice"
        headers[name.lower()] = value.strip()
    length = int(headers["content-length"])
    if len(buf) < end + 4 + length:
        return None
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return Reply(lines[0], headers, body)


def request(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    head = "".join(f"{h}\r\n" for h in ("Host: test", *headers))
    return f"{method} {path} HTTP/{version}\r\n{head}\r\n".encode("latin-1")


def padded_request(path: str, size: int) -> bytes:
    """A GET of ``path`` exactly ``size`` bytes long, made so by one long header."""
    bare = request(path, "X-Pad: ")
    assert size >= len(bare)
    return request(path, "X-Pad: " + "p" * (size - len(bare)))


class Client:
    """A blocking loopback client that reads whole responses."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        self.sock.settimeout(DEADLINE_S)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> Reply:
        while (reply := take_reply(self.buf)) is None:
            data = self.sock.recv(1 << 16)
            if not data:
                pytest.fail(f"EOF before a whole response; got {bytes(self.buf[:200])!r}")
            self.buf += data
        return reply

    def get(self, path: str, *headers: str) -> Reply:
        self.send(request(path, *headers))
        return self.reply()

    def expect_eof(self) -> None:
        """The server closed the connection, with nothing more after what was read."""
        data = self.sock.recv(1 << 16)
        assert not self.buf and data == b"", f"more after the last response: {data[:200]!r}"


@pytest.fixture
def clients(server: LoopThread) -> Iterator[Callable[[], Client]]:
    made: list[Client] = []

    def connect() -> Client:
        c = Client(server.port)
        made.append(c)
        return c

    yield connect
    for c in made:
        c.close()


def expect(reply: Reply, status_line: str, body: bytes, *, keep_alive: bool = True) -> None:
    assert reply.status_line == status_line
    assert reply.body == body
    assert reply.headers["connection"] == ("keep-alive" if keep_alive else "close")
    assert reply.headers["content-length"] == str(len(body))


# -- one request at a time -----------------------------------------------------------------


def test_the_handler_gets_method_path_query_and_lowercased_headers(
    clients: Callable[[], Client], routes: Routes
) -> None:
    c = clients()
    reply = c.get("/echo/x?a=1&b=two", "X-Custom: Some Value", "ACCEPT: */*")
    assert reply.status_line == "HTTP/1.1 200 OK"
    assert reply.headers == {
        "content-type": TEXT,
        "content-length": str(len(b"GET /echo/x?a=1&b=two")),
        "connection": "keep-alive",
    }
    assert reply.body == b"GET /echo/x?a=1&b=two"
    [seen] = routes.seen
    assert (seen.method, seen.path, seen.query) == ("GET", "/echo/x", "a=1&b=two")
    assert seen.headers == {"host": "test", "x-custom": "Some Value", "accept": "*/*"}


def test_a_request_body_is_consumed_and_the_next_request_parsed(
    clients: Callable[[], Client], routes: Routes
) -> None:
    c = clients()
    c.send(request("/echo/post", "Content-Length: 11", method="POST") + b"GET /x HTTP")
    expect(c.reply(), "HTTP/1.1 200 OK", b"POST /echo/post?")
    expect(c.get("/echo/after"), "HTTP/1.1 200 OK", b"GET /echo/after?")
    assert [(r.method, r.path) for r in routes.seen] == [
        ("POST", "/echo/post"),
        ("GET", "/echo/after"),
    ]


def test_keep_alive_serves_one_request_after_another_on_one_connection(
    server: LoopThread, clients: Callable[[], Client], routes: Routes
) -> None:
    c = clients()
    for i in range(5):
        expect(c.get(f"/echo/{i}"), "HTTP/1.1 200 OK", f"GET /echo/{i}?".encode())
    assert len(server.protocols) == 1
    assert routes.paths == [f"/echo/{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("version", "headers"),
    [("1.1", ("Connection: close",)), ("1.0", ()), ("1.1", ("Connection: keep-alive, close",))],
    ids=["1.1-close", "1.0-default", "1.1-close-in-a-list"],
)
def test_a_request_without_keep_alive_is_answered_then_the_connection_closed(
    clients: Callable[[], Client], version: str, headers: tuple[str, ...]
) -> None:
    c = clients()
    c.send(request("/echo/last", *headers, version=version))
    expect(c.reply(), "HTTP/1.1 200 OK", b"GET /echo/last?", keep_alive=False)
    c.expect_eof()


def test_http_1_0_with_keep_alive_keeps_the_connection(clients: Callable[[], Client]) -> None:
    c = clients()
    for i in range(2):
        c.send(request(f"/echo/{i}", "Connection: keep-alive", version="1.0"))
        expect(c.reply(), "HTTP/1.1 200 OK", f"GET /echo/{i}?".encode())


@pytest.mark.parametrize("order", [("/a", "/a/b", "/"), ("/", "/a/b", "/a")], ids=str)
def test_the_longest_matching_prefix_wins_whatever_the_order_of_adding(
    order: tuple[str, ...],
) -> None:
    routes = Routes()
    router = Router()
    for prefix in order:
        router.add(prefix, routes.named(prefix))

    def body(path: str) -> bytes:
        answer = router.dispatch(Request("GET", path, "", {}))
        assert isinstance(answer, tuple)
        return answer[2]

    assert body("/a/b/c") == b"/a/b:/a/b/c"
    assert body("/a/bc") == b"/a/b:/a/bc"  # a prefix of the path, not a path segment
    assert body("/a/x") == b"/a:/a/x"
    assert body("/ab") == b"/a:/ab"
    assert body("/z") == b"/:/z"


def test_an_unknown_path_gets_404_and_the_connection_stays(
    clients: Callable[[], Client], routes: Routes
) -> None:
    c = clients()
    reply = c.get("/nothing/here")
    expect(reply, "HTTP/1.1 404 Not Found", b"not found\n")
    assert reply.headers["content-type"] == TEXT
    assert routes.seen == []
    expect(c.get("/echo/next"), "HTTP/1.1 200 OK", b"GET /echo/next?")


def test_a_failing_handler_gets_500_and_the_connection_stays(
    clients: Callable[[], Client], routes: Routes, caplog: pytest.LogCaptureFixture
) -> None:
    c = clients()
    expect(c.get("/broken"), "HTTP/1.1 500 Internal Server Error", b"internal error\n")
    assert "HTTP handler for /broken failed" in caplog.text
    expect(c.get("/echo/next"), "HTTP/1.1 200 OK", b"GET /echo/next?")
    assert routes.paths == ["/broken", "/echo/next"]


# -- refusals ------------------------------------------------------------------------------

MALFORMED = {
    "not-http": b"NOT A REQUEST\r\n\r\n",
    "no-target": b"GET\r\n\r\n",
    "bad-version": b"GET /echo HTTP/9.Z\r\n\r\n",
    "binary": b"\x00\x01\x02\x03\r\n\r\n",
    "header-without-colon": b"GET /echo HTTP/1.1\r\nNoColonHere\r\n\r\n",
    "space-in-header-name": b"GET /echo HTTP/1.1\r\nBad Name: x\r\n\r\n",
    "folded-header": b"GET /echo HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    "bad-content-length": b"POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    "two-content-lengths": b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "invalid-url": b"GET http:// HTTP/1.1\r\n\r\n",
    "upgrade": b"GET /echo HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_gets_one_400_and_only_its_connection_closes(
    clients: Callable[[], Client], routes: Routes, raw: bytes
) -> None:
    bystander = clients()
    expect(bystander.get("/echo/before"), "HTTP/1.1 200 OK", b"GET /echo/before?")
    bad = clients()
    bad.send(raw)
    reply = bad.reply()
    expect(reply, "HTTP/1.1 400 Bad Request", b"bad request\n", keep_alive=False)
    bad.expect_eof()  # and nothing else: one request, one answer
    assert routes.paths == ["/echo/before"]  # the bad request reached no handler
    expect(bystander.get("/echo/after"), "HTTP/1.1 200 OK", b"GET /echo/after?")
    expect(clients().get("/echo/new"), "HTTP/1.1 200 OK", b"GET /echo/new?")


def test_a_request_of_the_maximum_size_is_served(
    clients: Callable[[], Client], routes: Routes
) -> None:
    c = clients()
    c.send(padded_request("/echo/max", MAX_REQUEST_BYTES))
    expect(c.reply(), "HTTP/1.1 200 OK", b"GET /echo/max?")
    assert len(routes.seen[0].headers["x-pad"]) > MAX_REQUEST_BYTES - 100


@pytest.mark.parametrize("size", [MAX_REQUEST_BYTES + 1, 4 * MAX_REQUEST_BYTES])
def test_oversized_headers_are_refused(
    clients: Callable[[], Client], routes: Routes, size: int
) -> None:
    bystander = clients()
    c = clients()
    c.send(padded_request("/echo/huge", size))
    expect(c.reply(), "HTTP/1.1 400 Bad Request", b"bad request\n", keep_alive=False)
    c.expect_eof()
    assert routes.seen == []
    expect(bystander.get("/echo/ok"), "HTTP/1.1 200 OK", b"GET /echo/ok?")


def test_an_oversized_body_is_refused(clients: Callable[[], Client], routes: Routes) -> None:
    c = clients()
    size = 2 * MAX_REQUEST_BYTES
    c.send(request("/echo/upload", f"Content-Length: {size}", method="POST") + b"b" * size)
    expect(c.reply(), "HTTP/1.1 400 Bad Request", b"bad request\n", keep_alive=False)
    c.expect_eof()
    assert routes.seen == []


def test_a_slow_request_split_into_tiny_writes_is_served(
    clients: Callable[[], Client], routes: Routes
) -> None:
    c = clients()
    raw = request("/echo/slow?q=1", "X-A: 1", "X-B: 2")
    for i in range(len(raw)):
        c.send(raw[i : i + 1])
    expect(c.reply(), "HTTP/1.1 200 OK", b"GET /echo/slow?q=1")
    assert routes.seen[0].headers == {"host": "test", "x-a": "1", "x-b": "2"}


# -- pipelining ----------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(
    clients: Callable[[], Client], routes: Routes
) -> None:
    paths = [f"/echo/{i}" if i % 7 else f"/missing/{i}" for i in range(40)]
    paths[13] = "/broken"
    c = clients()
    c.send(b"".join(request(p) for p in paths))
    replies = [c.reply() for _ in paths]
    for path, reply in zip(paths, replies, strict=True):
        if path.startswith("/echo/"):
            expect(reply, "HTTP/1.1 200 OK", f"GET {path}?".encode())
        elif path == "/broken":
            assert reply.status == 500
        else:
            assert reply.status == 404
    assert routes.paths == [p for p in paths if not p.startswith("/missing/")]


class Peer(Protocol):
    """The client end of an in-memory connection: keeps what it receives."""

    def __init__(self) -> None:
        self.conn: Transport | None = None
        self.received = bytearray()
        self.closed = False

    def connection_made(self, conn: Transport) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True


def exchange(stream: bytes, routes: Routes, *, chunk_size: int | None, answers: int) -> list[Reply]:
    """Send ``stream`` in one write to an HttpProtocol over memory transports, delivered
    ``chunk_size`` bytes per ``data_received`` (None: all at once); return the replies
    once there are ``answers`` of them (keep-alive) or the server closed (``answers=0``)."""
    loop = EventLoop()
    try:
        peer = Peer()
        server = HttpProtocol(standard_router(routes))
        client, _ = transport_pair(loop, peer, server, chunk_size=chunk_size)
        client.write(stream)
        deadline = time.monotonic() + DEADLINE_S
        replies: list[Reply] = []
        while not (peer.closed if answers == 0 else len(replies) == answers):
            assert time.monotonic() < deadline, f"closed: {peer.closed}, replies: {replies}"
            loop.run_once(0.01)
            while (reply := take_reply(peer.received)) is not None:
                replies.append(reply)
        assert not peer.received, f"bytes after the last response: {bytes(peer.received[:80])!r}"
        assert peer.closed == (answers == 0)
        client.abort()
        return replies
    finally:
        loop.close()


@pytest.mark.parametrize("chunk_size", [1, 7, 1000, None], ids=lambda c: f"chunks-{c}")
def test_any_split_of_a_pipelined_stream_gets_the_same_answers(
    chunk_size: int | None,
) -> None:
    paths = [f"/echo/{i}?n={i}" for i in range(30)]
    stream = b"".join(request(p) for p in paths[:10])
    stream += request("/echo/post", "Content-Length: 5", method="POST") + b"hello"
    stream += b"".join(request(p) for p in paths[10:])
    bodies = [f"GET {p}".encode() for p in paths]
    bodies.insert(10, b"POST /echo/post?")
    routes = Routes()
    replies = exchange(stream, routes, chunk_size=chunk_size, answers=len(bodies))
    assert [r.body for r in replies] == bodies
    assert all(r.status_line == "HTTP/1.1 200 OK" for r in replies)


def test_many_small_pipelined_requests_in_one_read_are_all_served() -> None:
    # Each request is small; together they are more than MAX_REQUEST_BYTES in one read.
    paths = [f"/echo/{i}" for i in range(MAX_REQUEST_BYTES // 15)]
    stream = b"".join(request(p) for p in paths)
    assert len(stream) > 2 * MAX_REQUEST_BYTES
    routes = Routes()
    replies = exchange(stream, routes, chunk_size=None, answers=len(paths))
    assert [r.status for r in replies] == [200] * len(paths)
    assert routes.paths == paths


def test_an_oversized_request_behind_a_small_one_is_refused() -> None:
    # Read as a socket would, read_size bytes at a time: the first read holds the small
    # request and the start of the big one, which must count towards the big one's size.
    stream = request("/echo/small") + padded_request("/echo/big", MAX_REQUEST_BYTES + 5000)
    routes = Routes()
    replies = exchange(stream, routes, chunk_size=DEFAULT_FLOW.read_size, answers=0)
    assert [(r.status_line, r.body) for r in replies] == [
        ("HTTP/1.1 200 OK", b"GET /echo/small?"),
        ("HTTP/1.1 400 Bad Request", b"bad request\n"),
    ]
    assert routes.paths == ["/echo/small"]


@pytest.mark.parametrize("chunk_size", [None, 1], ids=["one-read", "byte-by-byte"])
def test_nothing_after_a_closing_request_is_served(chunk_size: int | None) -> None:
    stream = (
        request("/echo/1")
        + request("/echo/2", "Connection: close")
        + request("/echo/3")
        + b"GARBAGE\r\n\r\n"
    )
    routes = Routes()
    replies = exchange(stream, routes, chunk_size=chunk_size, answers=0)
    assert [(r.body, r.headers["connection"]) for r in replies] == [
        (b"GET /echo/1?", "keep-alive"),
        (b"GET /echo/2?", "close"),
    ]
    assert routes.paths == ["/echo/1", "/echo/2"]


@pytest.mark.parametrize(
    "bad",
    [MALFORMED["header-without-colon"], MALFORMED["invalid-url"], MALFORMED["upgrade"]],
    ids=["bad-header", "invalid-url", "upgrade"],
)
def test_nothing_after_a_malformed_request_is_served(bad: bytes) -> None:
    stream = request("/echo/1") + bad + request("/echo/3")
    routes = Routes()
    replies = exchange(stream, routes, chunk_size=None, answers=0)
    assert [r.status for r in replies] == [200, 400]
    assert routes.paths == ["/echo/1"]


# -- routes that take a body, and answers given later ---------------------------------------

BODY_LIMIT = 1000


@pytest.fixture
def body_server() -> Iterator[LoopThread]:
    """``/up`` takes bodies up to BODY_LIMIT (``/up/own`` with its own refusal); ``/later``
    answers 20 ms after it is asked, from a timer, as work done off the loop would."""
    router = Router()
    holder: list[LoopThread] = []

    def up(request: Request) -> Response:
        return 200, TEXT, b"%d:" % len(request.body) + request.body[:10]

    def later(request: Request) -> Pending:
        pending = Pending()
        reply = HttpReply(200, TEXT, request.path.encode(), {"X-Later": "yes"})
        holder[0].loop.call_later(0.02, pending.complete, reply)
        return pending

    router.add("/up", up, max_body_bytes=BODY_LIMIT)
    router.add(
        "/up/own", up, max_body_bytes=BODY_LIMIT, too_large=lambda r: (200, TEXT, b"too big")
    )
    router.add("/later", later)
    router.add("/echo", Routes().echo)
    running = LoopThread(router)
    holder.append(running)
    try:
        yield running
    finally:
        running.close()


def post(path: str, body: bytes, *headers: str) -> bytes:
    return request(path, f"Content-Length: {len(body)}", *headers, method="POST") + body


def test_a_body_route_gets_its_body(body_server: LoopThread) -> None:
    c = Client(body_server.port)
    body = bytes(range(256)) * 3
    c.send(post("/up", body))
    expect(c.reply(), "HTTP/1.1 200 OK", b"768:" + body[:10])
    c.send(post("/up", b"x" * BODY_LIMIT))
    expect(c.reply(), "HTTP/1.1 200 OK", b"1000:" + b"x" * 10)
    chunked = request("/up", "Transfer-Encoding: chunked", method="POST")
    c.send(chunked + b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
    expect(c.reply(), "HTTP/1.1 200 OK", b"8:helloabc")
    c.close()


@pytest.mark.parametrize(
    ("path", "answer"), [("/up", b"request body too large\n"), ("/up/own", b"too big")]
)
def test_a_content_length_over_the_limit_is_answered_before_the_body_is_sent(
    body_server: LoopThread, path: str, answer: bytes
) -> None:
    c = Client(body_server.port)
    c.send(request(path, f"Content-Length: {BODY_LIMIT + 1}", method="POST"))  # no body
    reply = c.reply()
    assert reply.status == (413 if path == "/up" else 200)
    assert reply.body == answer
    assert reply.headers["connection"] == "close"
    c.expect_eof()
    c.close()


def test_a_chunked_body_is_refused_when_it_passes_the_limit(body_server: LoopThread) -> None:
    c = Client(body_server.port)
    c.send(request("/up", "Transfer-Encoding: chunked", method="POST"))
    c.send(b"".join(b"64\r\n" + b"y" * 100 + b"\r\n" for _ in range(11)))  # 1100 bytes
    assert c.reply().status == 413
    c.expect_eof()
    c.close()


def test_a_route_without_a_body_limit_still_refuses_large_bodies(body_server: LoopThread) -> None:
    c = Client(body_server.port)
    c.send(post("/echo", b"z" * (2 * MAX_REQUEST_BYTES)))
    assert c.reply().status == 400
    c.close()


def test_pending_answers_keep_the_request_order(body_server: LoopThread) -> None:
    # /later answers after /echo would have: pipelined, they still come back in order,
    # and the extra headers of a Reply are sent.
    c = Client(body_server.port)
    c.send(request("/later/1") + request("/echo/2") + request("/later/3") + request("/echo/4"))
    replies = [c.reply() for _ in range(4)]
    assert [r.body for r in replies] == [b"/later/1", b"GET /echo/2?", b"/later/3", b"GET /echo/4?"]
    assert replies[0].headers["x-later"] == "yes"
    c.close()


def test_a_malformed_request_behind_a_pending_one_is_answered_after_it(
    body_server: LoopThread,
) -> None:
    c = Client(body_server.port)
    c.send(request("/later/1") + b"NOT HTTP\r\n\r\n")
    first, second = c.reply(), c.reply()
    assert (first.body, second.status) == (b"/later/1", 400)
    c.expect_eof()
    c.close()


def test_a_pending_answer_after_the_client_left_is_dropped(body_server: LoopThread) -> None:
    c = Client(body_server.port)
    c.send(request("/later/gone"))
    c.close()
    time.sleep(0.05)  # the answer comes for a closed connection: nothing breaks
    c2 = Client(body_server.port)
    expect(c2.get("/echo/ok"), "HTTP/1.1 200 OK", b"GET /echo/ok?")
    c2.close()
