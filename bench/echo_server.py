"""Frame-echo server on imreactor, for the peer benchmark in ../shared/bench.

Same semantics as the peers: parse every PDU's 16-byte header, hand
``(service_id, command_id, seq, frame)`` to an application handler that writes
the reply. Prints READY once listening; exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys

from imreactor.net import EventLoop
from imreactor.pdu.framing import Frame, FrameProtocol

MAX_FRAME_BYTES = 1 << 20


class EchoProtocol(FrameProtocol):
    """Replies to every PDU with the same PDU."""

    __slots__ = ()

    max_pdu_bytes = MAX_FRAME_BYTES

    def frame_received(self, service_id: int, command_id: int, seq: int, frame: Frame) -> None:
        self.conn.write(frame)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--reuseport", action="store_true")
    ap.add_argument("--poller", default=None, help="epoll, poll, select (default: best)")
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = EventLoop(args.poller)
    loop.listen(args.host, args.port, EchoProtocol, reuse_port=args.reuseport, backlog=4096)
    loop.call_every(1.0, lambda: None)  # stands in for heartbeat checks, as in the peers
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    loop.run()
    loop.close()


if __name__ == "__main__":
    main()
