"""A PDU echo server: the smallest complete server on the reactor.

Parses every PDU's 16-byte header and replies with the same PDU. It is the
reference load for benchmarks (the peer servers in ``bench/`` do exactly the
same) and a target for checking a client's framing.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from ..net import EventLoop
from ..net.limits import raise_open_files_limit
from ..pdu.framing import Frame, FrameProtocol

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 1 << 20


class EchoProtocol(FrameProtocol):
    """Replies to every PDU with the same PDU."""

    __slots__ = ()

    max_pdu_bytes = MAX_FRAME_BYTES

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
        self.conn.write(frame)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=7000, help="TCP port (default 7000; 0 = any)")
    ap.add_argument("--reuseport", action="store_true", help="set SO_REUSEPORT")
    ap.add_argument("--poller", default=None, help="epoll, kqueue, poll or select (default: best)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM. Prints ``READY <host> <port>`` once listening."""
    raise_open_files_limit()
    loop = EventLoop(args.poller)
    server = loop.listen(
        args.host, args.port, EchoProtocol, reuse_port=args.reuseport, backlog=4096
    )
    loop.call_every(1.0, lambda: None)  # a periodic timer, as every real server has
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    sys.stdout.write(f"READY {args.host} {server.port}\n")
    sys.stdout.flush()
    log.info("echo server on %s:%d (%s)", args.host, server.port, loop.backend)
    try:
        loop.run()
    finally:
        server.close()
        loop.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(ap)
    return run(ap.parse_args(argv))
