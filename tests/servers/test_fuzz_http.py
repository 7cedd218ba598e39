"""Stateful fuzzing of the suite's HTTP servers: login_server (``/msg_server``, ``/readyz``,
``/metrics``, ``/healthz``) and msfs's uploads and downloads.

One :class:`~hypothesis.stateful.RuleBasedStateMachine` per server drives up to
``MAX_CONNS`` raw sockets with well-formed requests (GET and HEAD, keep-alive and
``Connection: close``, HTTP/1.0, pipelined in one write or split over many) and
malformed ones: garbage request lines, unknown and odd methods, heads past the 64 KiB
limit, a hundred and more headers, bodies where none is taken, bad and oversize
``Content-Length``, chunked bodies, upgrade requests, half a request and a hang-up.
For msfs also: multipart uploads with wrong boundaries, missing parts, non-images and
truncated bodies, besides real images (whose URLs must then serve the same bytes).

Invariants after every step: the server runs and logged no traceback; a fresh probe
gets its answer (login_server: ``/msg_server`` offers the msg_server; msfs: an upload
is stored and downloads back); a connection is answered in order or closed, never left
hanging; a request answered ``400`` is followed by a close.

Cost and the deep variant: as in test_fuzz_msg_server.py (``IMREACTOR_FUZZ_EXAMPLES``,
``IMREACTOR_FUZZ_STEPS``).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from imreactor.http import MAX_REQUEST_BYTES

from .conftest import RunningSuite, start_suite
from .test_fuzz_msg_server import DEEP, FAST, QUIET_S, WAIT_S, Closed, Quiet, RawWire

MAX_CONNS = 4
LOGIN_PATHS = ("/msg_server", "/msg_server?x=1", "/readyz", "/healthz", "/metrics", "/nope", "/")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")
token = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=20)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpWire(RawWire):
    """One raw HTTP connection: whole responses in."""

    def answer(self, head_only: bool = False, wait_s: float | None = None) -> Answer:
        """The next whole response; raises :class:`Closed` if the server closes first, and
        :class:`Quiet` if ``wait_s`` is given and nothing at all arrives within it."""
        deadline = time.monotonic() + (WAIT_S if wait_s is None else wait_s)
        while b"\r\n\r\n" not in self.buf:
            if self.closed and not self.buf:
                raise Closed
            assert not self.closed, f"closed inside a response head: {bytes(self.buf[:200])!r}"
            self.fill(deadline, quiet=wait_s is not None and not self.buf)
        head, _, _ = bytes(self.buf).partition(b"\r\n\r\n")
        del self.buf[: len(head) + 4]
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ")
        assert version == "HTTP/1.1", status_line
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers["content-length"])
        while len(self.buf) < length:
            assert not self.closed, "closed inside a response body"
            self.fill(deadline)
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return Answer(int(status), headers, body)

    def closed_or_answers(self) -> list[Answer]:
        """Read until the server closes; the responses it sent before."""
        answers = []
        while True:
            try:
                answers.append(self.answer())
            except Closed:
                return answers


def request(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class HttpConn:
    wire: HttpWire
    #: Sent something whose outcome the model cannot say: answers are not checked, and
    #: the server may close it.
    doomed: bool = False
    owed: list[bool] = field(default_factory=list)  # responses owed, by head_only


class HttpFuzz(RuleBasedStateMachine):
    """What holds for any of the suite's HTTP servers; subclasses add its routes."""

    port: int
    log: Path
    log_offset: int

    def __init__(self) -> None:
        super().__init__()
        self.conns: list[HttpConn] = []

    def pick(self, n: int) -> HttpConn:
        return self.conns[n % len(self.conns)]

    def gone(self, c: HttpConn) -> None:
        c.wire.close()
        self.conns.remove(c)

    def answered(self, c: HttpConn, method: str, path: str) -> Answer | None:
        """The answer to a well-formed request on ``c`` (None: ``c`` was closed, which
        only a doomed connection may be)."""
        try:
            a = c.wire.answer(head_only=method == "HEAD")
        except Closed:
            assert c.doomed, f"closed instead of answering {method} {path}"
            self.gone(c)
            return None
        if a.status == 400:
            assert c.doomed, f"{method} {path} refused as a bad request"
            self.expect_closed(c)
            return None
        if a.headers.get("connection") == "close":
            self.expect_closed(c)
        return a

    def expect_closed(self, c: HttpConn) -> list[Answer]:
        answers = c.wire.closed_or_answers()
        self.gone(c)
        return answers

    def uncertain(self, c: HttpConn) -> None:
        """After input the model cannot judge: answered and kept, or answered and closed
        (a 400 is the last answer); or, when that input promised more bytes (a body
        longer than sent), waiting for them: then our end of the stream ends, and the
        server must close."""
        c.doomed = True
        # /readyz, which no malformed input here names: its answer is the last one owed.
        c.wire.send(request("GET", "/readyz"))
        try:
            while True:
                a = c.wire.answer(wait_s=QUIET_S)
                if a.status == 400 or a.headers.get("connection") == "close":
                    self.expect_closed(c)
                    return
                if b'"ready"' in a.body:
                    return  # the connection still serves
        except Closed:
            self.gone(c)
        except Quiet:
            c.wire.sock.shutdown(socket.SHUT_WR)
            self.expect_closed(c)

    @precondition(lambda self: len(self.conns) < MAX_CONNS)
    @rule()
    def connect(self) -> None:
        self.conns.append(HttpConn(HttpWire(self.port)))

    @precondition(lambda self: bool(self.conns))
    @rule(n=st.integers(0, MAX_CONNS), partial=st.binary(max_size=100))
    def hang_up(self, n: int, partial: bytes) -> None:
        c = self.pick(n)
        c.wire.send(partial)
        self.gone(c)

    @precondition(lambda self: bool(self.conns))
    @rule(
        n=st.integers(0, MAX_CONNS),
        line=st.binary(max_size=200),
        tail=st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b""]),
    )
    def garbage(self, n: int, line: bytes, tail: bytes) -> None:
        c = self.pick(n)
        c.wire.send(line + tail)
        self.uncertain(c)

    @precondition(lambda self: bool(self.conns))
    @rule(
        n=st.integers(0, MAX_CONNS),
        # Not HEAD: its answer has no body, and the model would not know to skip it.
        method=token.filter(lambda m: m.upper() != "HEAD")
        | st.sampled_from(["CONNECT", "PRI", "get", "G E T"]),
        path=st.sampled_from(["/msg_server", "*", "http://x/", "/%zz", "", "/" + "a" * 3000]),
        version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9", "", "FOO"]),
    )
    def odd_request_line(self, n: int, method: str, path: str, version: str) -> None:
        c = self.pick(n)
        c.wire.send(f"{method} {path} {version}\r\nHost: x\r\n\r\n".encode("latin-1"))
        self.uncertain(c)

    @precondition(lambda self: bool(self.conns))
    @rule(n=st.integers(0, MAX_CONNS), size=st.integers(MAX_REQUEST_BYTES, 4 * MAX_REQUEST_BYTES))
    def huge_head(self, n: int, size: int) -> None:
        c = self.pick(n)
        c.wire.send(request("GET", "/healthz", {"X-Big": "a" * size}))
        answers = self.expect_closed(c)
        assert [a.status for a in answers] in ([], [400]), answers

    @precondition(lambda self: bool(self.conns))
    @rule(n=st.integers(0, MAX_CONNS), count=st.integers(90, 400))
    def many_headers(self, n: int, count: int) -> None:
        c = self.pick(n)
        headers = {f"X-H{i}": "v" for i in range(count)}
        c.wire.send(request("GET", "/healthz", headers))
        self.uncertain(c)

    @precondition(lambda self: bool(self.conns))
    @rule(
        n=st.integers(0, MAX_CONNS),
        length=st.sampled_from(["-1", "abc", "99999999999999999999", "1, 2", ""])
        | st.integers(0, 2**40).map(str),
        body=st.binary(max_size=200),
        chunked=st.booleans(),
    )
    def odd_body(self, n: int, length: str, body: bytes, chunked: bool) -> None:
        c = self.pick(n)
        head = f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        if chunked:
            head += "Transfer-Encoding: chunked\r\n"
        c.wire.send(head.encode() + b"\r\n" + body)
        self.uncertain(c)

    @precondition(lambda self: bool(self.conns))
    @rule(n=st.integers(0, MAX_CONNS), proto=st.sampled_from(["websocket", "h2c", "x"]))
    def upgrade(self, n: int, proto: str) -> None:
        c = self.pick(n)
        c.wire.send(request("GET", "/healthz", {"Connection": "Upgrade", "Upgrade": proto}))
        answers = self.expect_closed(c)
        assert [a.status for a in answers] == [400], answers

    @invariant()
    def runs_and_logs_no_traceback(self) -> None:
        with self.log.open("rb") as f:
            f.seek(type(self).log_offset)
            new = f.read()
        type(self).log_offset += len(new)
        assert b"Traceback" not in new, new.decode(errors="replace")

    def teardown(self) -> None:
        for c in list(self.conns):
            self.gone(c)


class LoginHttpFuzz(HttpFuzz):
    """login_server's HTTP port."""

    suite: RunningSuite

    @precondition(lambda self: any(not c.doomed for c in self.conns))
    @rule(
        n=st.integers(0, MAX_CONNS),
        paths=st.lists(st.sampled_from(LOGIN_PATHS), min_size=1, max_size=6),
        head=st.booleans(),
        cuts=st.lists(st.integers(1, 50), max_size=5),
        close=st.booleans(),
    )
    def pipelined(self, n: int, paths: list[str], head: bool, cuts: list[int], close: bool) -> None:
        """Requests in one stream, cut anywhere: answered in order, the last with a close
        if it asked for one."""
        c = [c for c in self.conns if not c.doomed][n % sum(not c.doomed for c in self.conns)]
        method = "HEAD" if head else "GET"
        stream = b"".join(
            request(method, p, {"Connection": "close"} if close and i == len(paths) - 1 else {})
            for i, p in enumerate(paths)
        )
        at = 0
        for cut in cuts:
            c.wire.send(stream[at : at + cut])
            at += cut
        c.wire.send(stream[at:])
        for path in paths:
            a = self.answered(c, method, path)
            assert a is not None
            want = 404 if path == "/nope" else 200  # "/" is the web chat
            assert a.status == want, (path, a)
            if path.startswith("/msg_server") and not head:
                assert json.loads(a.body)["code"] == 0, a.body
        if close:
            assert c not in self.conns, "Connection: close was not honoured"

    @precondition(lambda self: any(not c.doomed for c in self.conns))
    @rule(n=st.integers(0, MAX_CONNS), method=st.sampled_from(METHODS), http10=st.booleans())
    def any_method(self, n: int, method: str, http10: bool) -> None:
        c = [c for c in self.conns if not c.doomed][n % sum(not c.doomed for c in self.conns)]
        text = request(method, "/msg_server")
        if http10:
            text = text.replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        c.wire.send(text)
        a = self.answered(c, method, "/msg_server")
        if a is not None and http10:
            assert c not in self.conns, "an HTTP/1.0 connection was kept without keep-alive"

    @invariant()
    def a_probe_is_offered_the_msg_server(self) -> None:
        with urllib.request.urlopen(f"{self.suite.http_url}/msg_server", timeout=WAIT_S) as rsp:
            body = json.loads(rsp.read())
        assert body["code"] == 0 and body["port"] == str(self.suite.layout.msg_ports[0]), body
        assert self.suite.children["login_server"].proc.poll() is None


#: The smallest PNG: a 1x1 image (msfs checks the magic, not the pixels).
def png(seed: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    pixel = zlib.compress(b"\x00" + seed.to_bytes(3, "big"))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixel) + chunk(b"IEND", b"")


def multipart_body(
    boundary: str, data: bytes, filename: str = "a.png", name: str = "file"
) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}";'
            f' filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def upload_request(body: bytes, boundary: str, extra: dict[str, str] | None = None) -> bytes:
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **(extra or {})}
    return request("POST", "/", headers, body)


class MsfsFuzz(HttpFuzz):
    """msfs: uploads (multipart POST) and downloads (GET, HEAD, ranges)."""

    suite: RunningSuite
    stored: dict[str, bytes]  # url path -> content, across examples

    @precondition(lambda self: any(not c.doomed for c in self.conns))
    @rule(n=st.integers(0, MAX_CONNS), seed=st.integers(0, 2**24 - 1), boundary=token)
    def upload(self, n: int, seed: int, boundary: str) -> None:
        c = [c for c in self.conns if not c.doomed][n % sum(not c.doomed for c in self.conns)]
        image = png(seed)
        c.wire.send(upload_request(multipart_body(boundary, image), boundary))
        a = self.answered(c, "POST", "/")
        assert a is not None and a.status == 200, a
        answer = json.loads(a.body)
        assert answer["error_code"] == 0, answer
        self.stored["/" + answer["path"]] = image

    @precondition(lambda self: any(not c.doomed for c in self.conns) and bool(self.stored))
    @rule(n=st.integers(0, MAX_CONNS), which=st.integers(0, 1000), head=st.booleans())
    def download(self, n: int, which: int, head: bool) -> None:
        c = [c for c in self.conns if not c.doomed][n % sum(not c.doomed for c in self.conns)]
        path = sorted(self.stored)[which % len(self.stored)]
        method = "HEAD" if head else "GET"
        c.wire.send(request(method, path))
        a = self.answered(c, method, path)
        assert a is not None and a.status == 200, a
        if not head:
            assert a.body == self.stored[path]

    @precondition(lambda self: bool(self.conns))
    @rule(
        n=st.integers(0, MAX_CONNS),
        boundary=token,
        other=token,
        data=st.binary(max_size=300) | st.builds(png, st.integers(0, 100)),
        filename=st.sampled_from(["a.png", "a", "../../etc/passwd", "a.exe", "", "a.png\x00"]),
        name=st.sampled_from(["file", "", "x"]),
        cut=st.integers(0, 400),
        how=st.sampled_from(["wrong boundary", "truncated", "no parts", "odd part", "range"]),
    )
    def bad_upload(
        self,
        n: int,
        boundary: str,
        other: str,
        data: bytes,
        filename: str,
        name: str,
        cut: int,
        how: str,
    ) -> None:
        c = self.pick(n)
        body = multipart_body(boundary, data, filename, name)
        extra: dict[str, str] = {}
        if how == "wrong boundary":
            wire = upload_request(body, other)
        elif how == "truncated":
            wire = upload_request(body, boundary)
            wire = wire[: len(wire) - cut % (len(body) + 1)]
        elif how == "no parts":
            wire = upload_request(f"--{boundary}--\r\n".encode(), boundary)
        elif how == "odd part":
            wire = upload_request(data, boundary)
        else:
            extra["Range"] = f"bytes={cut}-{cut // 2}"
            wire = request("GET", f"/g0/{filename}", extra)
        c.wire.send(wire)
        self.uncertain(c)

    @invariant()
    def a_probe_uploads_and_downloads(self) -> None:
        image = png(len(self.stored) + 2**23)
        boundary = "probe"
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/",
            data=multipart_body(boundary, image),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(req, timeout=WAIT_S) as rsp:
            answer = json.loads(rsp.read())
        assert answer["error_code"] == 0, answer
        with urllib.request.urlopen(answer["url"], timeout=WAIT_S) as rsp:
            assert rsp.read() == image
        assert self.suite.children["msfs"].proc.poll() is None


@pytest.fixture
def http_suite(tmp_path: Path) -> Iterator[RunningSuite]:
    suite = start_suite(tmp_path / "suite", f"sqlite:///{tmp_path / 'im.db'}")
    try:
        yield suite
    finally:
        suite.stop()


def fuzz_login(suite: RunningSuite, config: Any) -> None:
    class Machine(LoginHttpFuzz):
        pass

    Machine.suite, Machine.port = suite, suite.layout.http_port
    Machine.log, Machine.log_offset = suite.layout.data_dir / "login_server.log", 0
    run_state_machine_as_test(Machine, settings=config)


def fuzz_msfs(suite: RunningSuite, config: Any) -> None:
    class Machine(MsfsFuzz):
        pass

    Machine.suite, Machine.port, Machine.stored = suite, suite.layout.msfs_port, {}
    Machine.log, Machine.log_offset = suite.layout.data_dir / "msfs.log", 0
    run_state_machine_as_test(Machine, settings=config)


@pytest.mark.timeout(300)
def test_login_server_http_survives_stateful_fuzzing(http_suite: RunningSuite) -> None:
    fuzz_login(http_suite, FAST)


@pytest.mark.timeout(300)
def test_msfs_survives_stateful_fuzzing(http_suite: RunningSuite) -> None:
    fuzz_msfs(http_suite, FAST)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_login_server_http_survives_deep_stateful_fuzzing(http_suite: RunningSuite) -> None:
    fuzz_login(http_suite, DEEP)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_msfs_survives_deep_stateful_fuzzing(http_suite: RunningSuite) -> None:
    fuzz_msfs(http_suite, DEEP)
