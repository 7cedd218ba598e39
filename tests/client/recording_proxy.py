"""Test helpers between a client and msg_server: a TCP proxy that records what clients send,
and a stand-in for login_server's ``/msg_server`` that points clients at the proxy.

Both are plain sockets and threads, independent of the reactor under test.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from imreactor.pdu.header import HEADER_LEN, parse_header
from imreactor.pdu.registry import message_class_for_command

CHUNK_BYTES = 65536


class RecordingProxy:
    """Forwards every connection to ``upstream``; decodes and keeps what goes through.

    :attr:`sent` has one list per accepted connection, in accept order, of the
    messages its client sent (unknown commands left out), :attr:`received` the
    same of what the server sent it; each message is recorded before it is
    forwarded. :meth:`drop` cuts every current connection, as a network failure would.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.sent: list[list[Any]] = []
        self.received: list[list[Any]] = []
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()  # upstream down: the client sees a refused login
                continue
            up: list[Any] = []
            down: list[Any] = []
            with self._lock:
                self.sent.append(up)
                self.received.append(down)
                self._open += [client, server]
            for args in ((client, server, up), (server, client, down)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: list[Any]) -> None:
        buf = bytearray()
        try:
            while data := src.recv(CHUNK_BYTES):
                # Recorded before forwarding: a test that sees the answer sees the request.
                buf += data
                buf = self._decode_frames(buf, record)
                dst.sendall(data)
        except OSError:
            pass  # dropped
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already down

    def _decode_frames(self, buf: bytearray, record: list[Any]) -> bytearray:
        """Record each whole PDU at the front of ``buf``; returns what is left."""
        while len(buf) >= HEADER_LEN:
            header = parse_header(buf)
            if len(buf) < header.length:
                break
            cls = message_class_for_command(header.command_id)
            if cls is not None:
                message = cls()
                message.ParseFromString(bytes(buf[HEADER_LEN : header.length]))
                with self._lock:
                    record.append(message)
            del buf[: header.length]
        return buf

    def messages(self, cls: type[Any], *, received: bool = False) -> list[list[Any]]:
        """Per connection so far, the messages of class ``cls`` its client sent (or got)."""
        with self._lock:
            conns = self.received if received else self.sent
            return [[m for m in conn if isinstance(m, cls)] for conn in conns]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
        """Until ``predicate()`` holds (AssertionError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "the proxy did not see it in time"
            time.sleep(0.02)

    def drop(self) -> None:
        """Cut every open connection (both ends see the stream end)."""
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already down

    def close(self) -> None:
        self._listener.close()
        self.drop()


class Locator:
    """Answers ``GET /msg_server`` as login_server does, with the address it is given."""

    def __init__(self, host: str, port: int) -> None:
        answer = json.dumps({"code": 0, "msg": "", "priorIP": host, "backupIP": host, "port": port})

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet tests

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
