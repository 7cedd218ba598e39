"""TLS frame-echo server on asyncio or uvloop: the peers of ``bench/tls_echo.py``.

The same frame echo as the peer servers of ../shared/bench (their asyncio
``Protocol``: parse each 16-byte TeamTalk header, hand every whole frame to the
handler, which writes it back), served with ``ssl=`` on ``create_server``, so
the event loop's own TLS layer does the encryption. The context is the one
imreactor's listeners use: TLS 1.2 or later, no renegotiation.

    python bench/tls_peer_server.py --port 7100 --cert cert.pem --key key.pem [--uvloop]

Prints ``READY <port>`` once listening; exits on SIGTERM or SIGINT. Runs on the
standard library alone (plus uvloop for ``--uvloop``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import resource
import signal
import socket
import ssl
import struct
import sys
from typing import cast

# uint32 total_length, uint16 version, flag, service_id, command_id, seq_num, reserved
HEADER = struct.Struct("!IHHHHHH")
HEADER_LEN = 16
MAX_FRAME_BYTES = 1 << 20
HANDSHAKE_TIMEOUT_S = 10.0

_unpack_from = HEADER.unpack_from


class FrameEcho(asyncio.Protocol):
    """Delivers whole frames to :meth:`on_frame`, which writes each one back."""

    __slots__ = ("buf", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but it is one.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n = len(buf)
        off = 0
        while n - off >= HEADER_LEN:
            length, _version, _flag, service_id, command_id, seq, _ = _unpack_from(buf, off)
            if length < HEADER_LEN or length > MAX_FRAME_BYTES:
                if self.transport is not None:
                    self.transport.close()
                return
            end = off + length
            if end > n:
                break
            self.on_frame(service_id, command_id, seq, buf[off:end])
            off = end
        self.buf = buf[off:] if off < n else b""

    def on_frame(self, service_id: int, command_id: int, seq: int, frame: bytes) -> None:
        """The application handler: reply with the same frame."""
        if self.transport is not None:
            self.transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.2+, renegotiation refused: what ``imreactor.net.tls.server_context`` makes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        FrameEcho,
        args.host,
        args.port,
        ssl=server_context(args.cert, args.key),
        ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
        backlog=4096,
        reuse_address=True,
        reuse_port=args.reuseport or None,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        server.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True, help="certificate chain (PEM)")
    ap.add_argument("--key", required=True, help="private key (PEM)")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's loop")
    ap.add_argument("--reuseport", action="store_true", help="set SO_REUSEPORT")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.uvloop:
        # Imported by name: uvloop is installed where the peers run, not where this is type-checked.
        uvloop = importlib.import_module("uvloop")
        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
