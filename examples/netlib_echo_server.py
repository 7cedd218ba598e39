"""An echo server in the original netlib callback style.

    python examples/netlib_echo_server.py [--host 127.0.0.1] [--port 7100] [--wait-ms 100]

Prints ``READY <host> <port>`` once listening (``--port 0`` picks a free port), echoes
every byte back on the connection it came from, and stops on SIGINT or SIGTERM,
printing ``STOPPED <connections accepted> <bytes echoed>``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from types import FrameType
from typing import Any

from imreactor.net.netlib import (
    NETLIB_ERROR,
    NETLIB_MSG_CLOSE,
    NETLIB_MSG_CONNECT,
    NETLIB_MSG_READ,
    NETLIB_OPT_GET_LOCAL_PORT,
    NETLIB_OPT_GET_REMOTE_IP,
    NETLIB_OPT_GET_REMOTE_PORT,
    NETLIB_OPT_SET_CALLBACK,
    NETLIB_OPT_SET_CALLBACK_DATA,
    netlib_close,
    netlib_destroy,
    netlib_eventloop,
    netlib_init,
    netlib_listen,
    netlib_option,
    netlib_recv,
    netlib_send,
    netlib_stop_event,
)

RECV_CHUNK_BYTES = 64 * 1024


@dataclass
class Stats:
    """The callback data of the listener and of every connection."""

    verbose: bool
    accepted: int = 0
    echoed_bytes: int = 0


# One buffer for every connection: the loop runs one callback at a time, and
# netlib_send copies what it is given, so the buffer is free again at once.
_buf = bytearray(RECV_CHUNK_BYTES)


def conn_callback(stats: Stats, msg: int, handle: int, param: Any) -> None:
    """Events of one accepted connection."""
    if msg == NETLIB_MSG_READ:
        view = memoryview(_buf)
        while True:
            n = netlib_recv(handle, _buf)
            if n <= 0:  # NETLIB_ERROR: nothing more buffered for now
                break
            netlib_send(handle, view[:n])
            stats.echoed_bytes += n
    elif msg == NETLIB_MSG_CLOSE and stats.verbose:
        print(f"closed {handle}: {param or 'peer closed'}", file=sys.stderr)


def listen_callback(stats: Stats, msg: int, handle: int, param: Any) -> None:
    """Events of the listening handle: one CONNECT per accepted connection."""
    if msg != NETLIB_MSG_CONNECT:
        return
    stats.accepted += 1
    netlib_option(handle, NETLIB_OPT_SET_CALLBACK, conn_callback)
    netlib_option(handle, NETLIB_OPT_SET_CALLBACK_DATA, stats)
    if stats.verbose:
        ip = netlib_option(handle, NETLIB_OPT_GET_REMOTE_IP)
        port = netlib_option(handle, NETLIB_OPT_GET_REMOTE_PORT)
        print(f"accepted {handle} from {ip}:{port}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7100)
    ap.add_argument("--wait-ms", type=int, default=100, help="netlib_eventloop wait_timeout")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    stats = Stats(verbose=args.verbose)
    netlib_init()
    listener = netlib_listen(args.host, args.port, listen_callback, stats)
    if listener == NETLIB_ERROR:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        # A plain signal handler runs between two steps of the loop; the loop
        # notices the stop when its current poll returns, after wait_timeout at most.
        netlib_stop_event()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    port = netlib_option(listener, NETLIB_OPT_GET_LOCAL_PORT)
    print(f"READY {args.host} {port}", flush=True)
    netlib_eventloop(args.wait_ms)
    netlib_close(listener)
    netlib_destroy()
    print(f"STOPPED {stats.accepted} {stats.echoed_bytes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
