"""A WebSocket client for tests: websockets' sans-IO client over a plain (or TLS) socket.

Non-blocking, so that one thread can drive both it and a reactor under test
(:meth:`WsClient.poll` between loop iterations), and with :meth:`WsClient.wait` for
servers in other processes. It can also send what no well-behaved client sends
(text frames, raw bytes, fragments), to test the server's refusals.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import SEND_EOF
from websockets.typing import Origin
from websockets.uri import parse_uri

DEADLINE_S = 10.0


class WsClient:
    """One client connection; the upgrade request is sent at once (not yet answered)."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        origin: str | None = None,
        context: ssl.SSLContext | None = None,
        max_size: int | None = 1 << 24,
        upgrade: bool = True,
    ) -> None:
        scheme = "wss" if context is not None else "ws"
        self.proto = ClientProtocol(
            parse_uri(f"{scheme}://{host}:{port}/"),
            origin=Origin(origin) if origin is not None else None,
            max_size=max_size,
        )
        raw = socket.create_connection((host, port), timeout=DEADLINE_S)
        raw.setblocking(False)
        self.sock: socket.socket = raw
        self._handshaking = False
        if context is not None:
            self.sock = context.wrap_socket(
                raw, server_hostname="localhost", do_handshake_on_connect=False
            )
            self._handshaking = True
        self._out = bytearray()
        self._want_eof = False
        self.response: Response | None = None
        self.messages: list[bytes] = []
        self.frames: list[Frame] = []
        self.eof = False
        if upgrade:
            self.proto.send_request(self.proto.connect())
            self._collect()

    # -- sending ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """One binary message."""
        self.proto.send_binary(data)
        self._collect()

    def send_text(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self._collect()

    def send_fragments(self, *parts: bytes) -> None:
        """One binary message in ``len(parts)`` frames."""
        self.proto.send_binary(parts[0], fin=len(parts) == 1)
        for i, part in enumerate(parts[1:], 2):
            self.proto.send_continuation(part, fin=i == len(parts))
        self._collect()

    def ping(self) -> None:
        self.proto.send_ping(b"p")
        self._collect()

    def close(self, code: int = 1000) -> None:
        self.proto.send_close(code)
        self._collect()

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are, past the protocol (a bad handshake, a broken frame)."""
        self._out += data
        self.poll()

    def shutdown(self) -> None:
        self.sock.close()

    # -- receiving -------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.response is not None and self.response.status_code == 101

    @property
    def close_code(self) -> int | None:
        close = self.proto.close_rcvd
        return int(close.code) if close is not None else None

    @property
    def raw_response(self) -> bytes:
        """What the server answered the upgrade with, status line and body."""
        if self.response is None:
            return b""
        return f"{self.response.status_code} {self.response.reason_phrase}\n".encode() + (
            self.response.body or b""
        )

    def poll(self) -> None:
        """Send what is queued and read what has arrived, without blocking."""
        if self._handshaking:
            try:
                assert isinstance(self.sock, ssl.SSLSocket)
                self.sock.do_handshake()
                self._handshaking = False
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError:
                self._out.clear()
                break
            del self._out[:sent]
        if self._want_eof and not self._out:
            self._want_eof = False
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        while not self.eof:
            try:
                data = self.sock.recv(1 << 16)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                self.eof = True
                self.proto.receive_eof()
            else:
                self.proto.receive_data(data)
            self._take_events()
        self._collect(poll=False)

    def wait(self, predicate: Callable[[], object], timeout_s: float = DEADLINE_S) -> None:
        """Block until ``predicate()`` holds (a server in another process answers)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if predicate():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not reached within {timeout_s:g} s: {predicate}")
            if not self.eof:
                select.select([self.sock], [self.sock] if self._out else [], [], min(left, 0.05))
            else:
                time.sleep(0.01)

    def _take_events(self) -> None:
        for event in self.proto.events_received():
            if isinstance(event, Response):
                self.response = event
            elif isinstance(event, Frame):
                self.frames.append(event)
                if event.opcode is Opcode.BINARY:
                    self.messages.append(bytes(event.data))

    def _collect(self, poll: bool = True) -> None:
        for chunk in self.proto.data_to_send():
            if chunk is SEND_EOF:
                self._want_eof = True  # after what is queued
            else:
                self._out += chunk
        if poll:
            self.poll()
