"""An echo client in the original netlib callback style.

    python examples/netlib_echo_client.py [--host 127.0.0.1] [--port 7100]
        [--connections 1] [--rounds 10] [--size 1000] [--timeout-ms 10000]

Opens ``--connections`` connections at once; each sends ``--rounds`` messages of
``--size`` random bytes, one at a time, waits for each to come back whole and
checks it, then closes. Prints ``OK <connections> <rounds> <bytes echoed>`` and
exits 0 when every connection got every byte back; otherwise prints ``FAIL
<reason>`` and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from imreactor.net.netlib import (
    NETLIB_INVALID_HANDLE,
    NETLIB_MSG_CLOSE,
    NETLIB_MSG_CONFIRM,
    NETLIB_MSG_READ,
    NETLIB_MSG_TIMER,
    netlib_close,
    netlib_connect,
    netlib_destroy,
    netlib_eventloop,
    netlib_init,
    netlib_recv,
    netlib_register_timer,
    netlib_send,
    netlib_stop_event,
)

RECV_CHUNK_BYTES = 64 * 1024


@dataclass
class Run:
    """What every connection shares: the settings and the outcome."""

    rounds: int
    size: int
    open_connections: int
    echoed_bytes: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class Client:
    """The callback data of one connection."""

    run: Run
    rounds_done: int = 0
    sent: bytes = b""
    received: bytearray = field(default_factory=bytearray)
    finished: bool = False


_buf = bytearray(RECV_CHUNK_BYTES)


def send_round(client: Client, handle: int) -> None:
    client.sent = os.urandom(client.run.size)
    client.received.clear()
    netlib_send(handle, client.sent)


def client_callback(client: Client, msg: int, handle: int, param: Any) -> None:
    run = client.run
    if msg == NETLIB_MSG_CONFIRM:
        send_round(client, handle)
    elif msg == NETLIB_MSG_READ:
        while (n := netlib_recv(handle, _buf)) > 0:
            client.received += memoryview(_buf)[:n]
        if len(client.received) < len(client.sent):
            return  # the rest of this round is still on its way
        if client.received != client.sent:
            run.failures.append(f"handle {handle}: round {client.rounds_done} came back altered")
            netlib_close(handle)
            return
        run.echoed_bytes += len(client.sent)
        client.rounds_done += 1
        if client.rounds_done < run.rounds:
            send_round(client, handle)
        else:
            client.finished = True
            netlib_close(handle)
    elif msg == NETLIB_MSG_CLOSE:
        if not client.finished and not run.failures:
            reason = param or "the server closed the connection"
            run.failures.append(f"handle {handle}: {reason} after {client.rounds_done} rounds")
        run.open_connections -= 1
        if run.open_connections == 0:
            netlib_stop_event()


def timeout_callback(run: Run, msg: int, handle: int, param: Any) -> None:
    if msg == NETLIB_MSG_TIMER:
        run.failures.append(f"timed out with {run.open_connections} connections open")
        netlib_stop_event()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7100)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--size", type=int, default=1000, help="bytes per message (> 0)")
    ap.add_argument("--timeout-ms", type=int, default=10_000)
    args = ap.parse_args(argv)
    if args.connections < 1 or args.rounds < 1 or args.size < 1:
        ap.error("--connections, --rounds and --size must be > 0")

    netlib_init()
    run = Run(rounds=args.rounds, size=args.size, open_connections=args.connections)
    for _ in range(args.connections):
        handle = netlib_connect(args.host, args.port, client_callback, Client(run))
        if handle == NETLIB_INVALID_HANDLE:
            print(f"FAIL cannot connect to {args.host}:{args.port}", flush=True)
            netlib_destroy()
            return 1
    netlib_register_timer(timeout_callback, run, args.timeout_ms)
    netlib_eventloop()
    netlib_destroy()
    if run.failures:
        print(f"FAIL {run.failures[0]}", flush=True)
        return 1
    print(f"OK {args.connections} {args.rounds} {run.echoed_bytes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
